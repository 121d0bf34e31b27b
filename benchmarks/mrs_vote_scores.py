"""MRS localisation: which per-block score finds the patch, on held-out training images.

The paper's joint voting (section 3.2, ``mrs.localization``) lets a block vote when inpainting it changes the base
classifier's label away from the most frequent one. A patch that does not change the label leaves no votes, and
the region lands by chance. This asks whether a softer score, the change of the whole output when the block is
inpainted, finds those patches too. Each score is put through the same cross template (reach 4 for 5x5 blocks at
stride 1), and the best block widened by 3 px is the region, as deployed (tau 20 never abstains). Scores, per
inpainted copy ``p`` against the uninpainted image ``p0`` (softmax outputs):

- ``label``: the paper's vote (the copy's label differs from the most frequent label);
- ``total_variation``: ``0.5 * |p - p0|_1``;
- ``kl``: ``KL(p0 || p)``;
- ``log_softmax_l2``: the L2 distance between the log-softmax vectors;
- ``label_plus_total_variation``: the vote plus the total variation (ties between votes broken by it).

Data: the 100 class-balanced training images (seed 0) that ``mrs.train --holdout 100`` left out of the deployed
base model's training (``cifar10_resnet20_mrs_sigma128.pt``); a 5x5 patch at a uniformly random place per image
(seed 4) from masked PGD against the base classifier (L-inf eps 1.0, step 0.05, 50 iterations, no random start), as
``mrs_sigma_tuning.py --holdout 100``. No smoothing is involved: coverage (the region covers the whole patch) is
what the localisation decides. Run: ``.venv/bin/python benchmarks/mrs_vote_scores.py`` (8 minutes at one
thread beside a two-thread run) -> ``benchmarks/results/mrs_vote_scores.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, softmax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from art_patch_defenses.attacks import masked_pgd  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations  # noqa: E402
from art_patch_defenses.models import make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.models.train_embedded import holdout_split  # noqa: E402
from art_patch_defenses.mrs import get_art_model  # noqa: E402
from art_patch_defenses.mrs.localization import block_starts, inpainted_copies, region_mask, template_scores  # noqa: E402

WEIGHTS = "cifar10_resnet20_mrs_sigma128.pt"
BLOCK, MARGIN = 5, 3


def block_scores(copies: np.ndarray, original: np.ndarray) -> dict[str, np.ndarray]:
    """Every score of one image's inpainted copies ``(P, classes)`` (logits) against its own logits."""
    labels = copies.argmax(1)
    vote = (labels != np.bincount(labels).argmax()).astype(float)
    total_variation = 0.5 * np.abs(softmax(copies, axis=1) - softmax(original)).sum(1)
    log_p, log_p0 = log_softmax(copies, axis=1), log_softmax(original)
    return {"label": vote, "total_variation": total_variation,
            "kl": (np.exp(log_p0) * (log_p0 - log_p)).sum(1),
            "log_softmax_l2": np.linalg.norm(log_p - log_p0, axis=1),
            "label_plus_total_variation": vote + total_variation}


def main() -> None:
    estimator = get_art_model({"name": "cifar_resnet20", "weights": WEIGHTS, "patch_size": BLOCK})
    train = load_dataset("cifar10", "train")
    _, held_out = holdout_split(train, 100)
    x, y = train.x[held_out], train.y[held_out]
    shape = x.shape[2:]
    true_masks = patch_masks(shape, (BLOCK, BLOCK), random_locations(len(x), shape, (BLOCK, BLOCK), seed=4))
    start = time.time()
    base = make_classifier(estimator.model, "cifar_resnet20")
    x_adv = masked_pgd(base, x, expand_masks(true_masks, x), y, eps=1.0, eps_step=0.05, max_iter=50,
                       num_random_init=0, batch_size=250, verbose=False)
    fooled = estimator.predict_base(x_adv).argmax(1) != y

    starts = block_starts(shape[0], BLOCK), block_starts(shape[1], BLOCK)
    positions = [(r, c) for r in starts[0] for c in starts[1]]
    covered: dict[str, list[bool]] = {}
    for image, patch in zip(x_adv, true_masks, strict=True):
        copies = estimator.predict_base(inpainted_copies(image, positions, BLOCK), batch_size=len(positions))
        for name, score in block_scores(copies, estimator.predict_base(image[None])[0]).items():
            scores = template_scores(score.reshape(len(starts[0]), len(starts[1])), BLOCK - 1)
            i, j = np.unravel_index(int(scores.argmax()), scores.shape)
            region = region_mask(shape, (starts[0][i], starts[1][j]), BLOCK, MARGIN)
            covered.setdefault(name, []).append(bool(np.all(region | ~patch)))

    results: dict = {"adversarial_accuracy_base": float(1 - fooled.mean()), "patches_fooling_base": int(fooled.sum())}
    for name, hits in covered.items():
        hits = np.array(hits)
        results |= {f"coverage_{name}": float(hits.mean()), f"coverage_fooled_{name}": float(hits[fooled].mean()),
                    f"coverage_not_fooled_{name}": float(hits[~fooled].mean())}
    config = {
        "model": "cifar_resnet20", "weights": WEIGHTS,
        "weights_sha256": sha256_of(weights_path("cifar_resnet20", WEIGHTS)),
        "data": "the 100 class-balanced training images (seed 0) left out by mrs.train --holdout 100; 5x5 patch at "
                "a uniformly random place (seed 4)",
        "attack": "masked PGD against the base classifier, L-inf eps 1.0, step 0.05, 50 iterations, no random start",
        "localization": {"block": BLOCK, "stride": 1, "template_reach": BLOCK - 1, "margin": MARGIN,
                         "inpaint": "Telea"},
        "seconds": round(time.time() - start, 1),
    }
    images = {"adversarial_accuracy_base": len(x)}
    for name in covered:
        images |= {f"coverage_{name}": len(x), f"coverage_fooled_{name}": int(fooled.sum()),
                   f"coverage_not_fooled_{name}": int((~fooled).sum())}
    write_result("mrs_vote_scores", config, results, images=images)


if __name__ == "__main__":
    main()
