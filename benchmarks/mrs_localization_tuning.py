"""MRS localisation settings chosen on training images: block side, abstain threshold tau and margin.

Model and smoothing as ``mrs_cifar10.py`` when this ran: ``checkpoints/cifar10_resnet20_mrs.pt``, sigma 128/255
(``mrs_sigma_tuning.py`` then chose 64 at this localisation), n0 = 100, n = 1000, alpha = 0.001, certified
accuracy counted at R = 25/255. The base model was noise-trained on every training image, so these images are not
unseen by it; they are never test images, which is what the choice needs (its clean and certified figures here are
not test figures: ``mrs_cifar10.py`` measures the choice).

Data: ``--n`` class-balanced training images (seed 3); a 5x5 patch at a uniformly random place per image (seed 4)
from masked PGD against the base classifier (L-inf eps 1.0, step 0.05, 50 iterations, no random start), as
``mrs_cifar10.py``.

Stage 1 (cheap, every setting): for each block side, the localisation of every clean and patched image once
(``mrs.localization.localize``: the best block and its template scores); each (tau, margin) then follows from
those: abstain when two groups score above tau, the region is the best block widened by the margin.
``coverage``: not abstained and the region covers the patch.
Stage 2 (the deciding figures): for each margin, the block side and tau of largest coverage (ties: the smaller),
and the deployed setting, ``certify`` in the found regions: ``clean_accuracy`` (clean images, abstain = wrong) and
``certified_accuracy_r25_localized`` (patched images, counted only where the region covers the patch), as
``mrs_cifar10.py`` defines them. The chosen setting has the largest localised certified accuracy among those whose
clean accuracy is at most ``--max-clean-drop`` below the deployed setting's (block 5, tau 8, margin 3).

Stage 1 per block and stage 2 per setting are kept under ``outputs/benchmarks/mrs_localization_tuning/`` as they
finish, so an interrupted run resumes. Run: ``.venv/bin/python benchmarks/mrs_localization_tuning.py`` (about
1 h 15 min on one thread); writes ``benchmarks/results/mrs_localization_tuning.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, keep_figures, kept_figures, write_result  # noqa: E402

from art_patch_defenses.attacks import masked_pgd  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations  # noqa: E402
from art_patch_defenses.models import make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.mrs import from_255, get_art_model, localize  # noqa: E402
from art_patch_defenses.mrs.localization import ambiguous, region_mask  # noqa: E402

DEPLOYED = (5, 8.0, 3)  # block, tau, margin deployed when this ran (the baseline of the choice; tau 20 since)
STORE = ROOT / "outputs" / "benchmarks" / "mrs_localization_tuning"


def locate(estimator, x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Best block top-left ``(N, 2)`` and template scores ``(N, rows, cols)`` of every image for one block side."""
    found = [localize(image, lambda copies: estimator.predict_base(copies).argmax(1), block, tau=np.inf)
             for image in x]
    return np.array([f.location for f in found]), np.stack([f.scores for f in found])


def regions(locations: np.ndarray, block: int, margin: int, shape: tuple[int, int]) -> np.ndarray:
    return np.stack([region_mask(shape, tuple(location), block, margin) for location in locations])


def certified_right(estimator, x: np.ndarray, y: np.ndarray, masks: np.ndarray, abstained: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the certified prediction is right, and it is right with a radius of at least R = 25/255, inside
    ``masks`` (a localisation abstain is wrong)."""
    result = estimator.certify(x, mask=masks, seed=seed)
    right = (result.prediction == y) & ~abstained
    return right, right & (result.radius >= from_255(25.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--blocks", type=int, nargs="+", default=[5, 7, 9])
    parser.add_argument("--taus", type=float, nargs="+", default=[8, 12, 16, 20, 24])
    parser.add_argument("--margins", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--max-clean-drop", type=float, default=0.02)
    args = parser.parse_args()
    if DEPLOYED[0] not in args.blocks or DEPLOYED[1] not in args.taus or DEPLOYED[2] not in args.margins:
        parser.error(f"the grid must hold the deployed setting (block, tau, margin) = {DEPLOYED}")

    estimator = get_art_model({"name": "cifar_resnet20", "weights": "mrs", "sigma_255": 128.0, "sample_size": 1000,
                               "n0": 100, "alpha": 0.001, "patch_size": 5})
    train = load_dataset("cifar10", "train", n=args.n, seed=3)
    x, y = train.x, train.y
    shape = x.shape[2:]
    true_masks = patch_masks(shape, (5, 5), random_locations(len(x), shape, (5, 5), seed=4))
    start = time.time()
    base = make_classifier(estimator.model, "cifar_resnet20")
    x_adv = masked_pgd(base, x, expand_masks(true_masks, x), y, eps=1.0, eps_step=0.05, max_iter=50,
                       num_random_init=0, batch_size=250, verbose=False)
    fooled = estimator.predict_base(x_adv).argmax(1) != y
    pgd_seconds = round(time.time() - start, 1)
    settings = {"weights_sha256": sha256_of(weights_path("cifar_resnet20", "mrs")), "n": args.n,
                "adversarial_sha256": hashlib.sha256(x_adv.tobytes()).hexdigest()}
    STORE.mkdir(parents=True, exist_ok=True)

    stage1: dict = {}
    for block in args.blocks:
        stored = STORE / f"locate_block{block}.npz"
        if stored.is_file() and json.loads(str(np.load(stored)["settings"])) == settings:
            found = np.load(stored)
        else:
            began = time.time()
            clean_locations, clean_scores = locate(estimator, x, block)
            adv_locations, adv_scores = locate(estimator, x_adv, block)
            np.savez(stored, settings=json.dumps(settings), clean_locations=clean_locations,
                     clean_scores=clean_scores, adv_locations=adv_locations, adv_scores=adv_scores,
                     seconds=time.time() - began)
            found = np.load(stored)
            print(f"block {block}: located in {time.time() - began:.0f} s", flush=True)
        stage1[block] = {key: found[key] for key in found.files}

    screen: dict = {}
    for block, found in stage1.items():
        for tau in args.taus:
            adv_abstain = np.array([ambiguous(s, tau) for s in found["adv_scores"]])
            clean_abstain = np.array([ambiguous(s, tau) for s in found["clean_scores"]])
            for margin in args.margins:
                masks = regions(found["adv_locations"], block, margin, shape)
                covered = ~adv_abstain & np.all(masks | ~true_masks, axis=(1, 2))
                screen[(block, tau, margin)] = {
                    "coverage": float(covered.mean()), "coverage_fooled": float(covered[fooled].mean()),
                    "abstain_adversarial": float(adv_abstain.mean()), "abstain_clean": float(clean_abstain.mean()),
                    "region_pixels": float(masks.sum(axis=(1, 2)).mean())}

    finalists = {DEPLOYED}
    for margin in args.margins:  # per margin the block and tau of largest coverage (ties: smaller block, tau)
        block, tau = max(((b, t) for b in args.blocks for t in args.taus),
                         key=lambda bt: (screen[(bt[0], bt[1], margin)]["coverage"], -bt[0], -bt[1]))
        finalists.add((block, tau, margin))
    certified: dict = {}
    for block, tau, margin in sorted(finalists):
        name = f"block{block}_tau{tau:g}_margin{margin}"
        kept = kept_figures(STORE / f"{name}.json", settings)
        if kept is not None:
            certified[name] = kept
            continue
        began = time.time()
        found = stage1[block]
        clean_abstain = np.array([ambiguous(s, tau) for s in found["clean_scores"]])
        adv_abstain = np.array([ambiguous(s, tau) for s in found["adv_scores"]])
        clean_masks = regions(found["clean_locations"], block, margin, shape)
        adv_masks = regions(found["adv_locations"], block, margin, shape)
        covered = np.all(adv_masks | ~true_masks, axis=(1, 2))
        clean_right, clean_certified = certified_right(estimator, x, y, clean_masks, clean_abstain, seed=0)
        _, adv_certified = certified_right(estimator, x_adv, y, adv_masks, adv_abstain, seed=2)
        figures = {
            "clean_accuracy": float(clean_right.mean()),  # as mrs_cifar10: the prediction, whatever its radius
            "certified_accuracy_r25_localized": float((adv_certified & covered).mean()),
            "certified_accuracy_r25_clean_localized": float(clean_certified.mean()),
            **screen[(block, tau, margin)], "seconds": round(time.time() - began, 1)}
        certified[name] = figures
        keep_figures(STORE / f"{name}.json", settings, figures)
        print(name, figures, flush=True)

    deployed = certified["block{}_tau{:g}_margin{}".format(*DEPLOYED)]
    allowed = [name for name, f in certified.items()
               if deployed["clean_accuracy"] - f["clean_accuracy"] <= args.max_clean_drop]
    results: dict = {
        "adversarial_accuracy_base": float(1 - fooled.mean()),
        "screen": {f"block{b}_tau{t:g}_margin{m}": figures for (b, t, m), figures in screen.items()},
        "chosen": max(allowed, key=lambda name: certified[name]["certified_accuracy_r25_localized"]),
    }
    for name, figures in certified.items():
        for key in ("clean_accuracy", "certified_accuracy_r25_localized", "certified_accuracy_r25_clean_localized",
                    "coverage"):
            results[f"{key}_{name}"] = figures[key]
    config = {
        "model": "cifar_resnet20", "weights": "cifar10_resnet20_mrs.pt", **settings,
        "smoothing": {"sigma_255": 128.0, "n0": 100, "n": 1000, "alpha": 0.001, "radius": "R = 25/255, L2"},
        "data": f"{args.n} class-balanced training images (seed 3), 5x5 patch at a random place (seed 4)",
        "attack": "masked PGD against the base classifier, L-inf eps 1.0, step 0.05, 50 iterations, no random start",
        "grid": {"blocks": args.blocks, "taus": args.taus, "margins": args.margins, "stride": 1, "overlap": 1},
        "choice": f"largest certified_accuracy_r25_localized with clean accuracy at most {args.max_clean_drop} "
                  f"below the deployed (block, tau, margin) = {DEPLOYED}",
        "seconds": {"masked_pgd": pgd_seconds, "this_run": round(time.time() - start, 1),
                    **{f"locate_block{b}": round(float(f["seconds"]), 1) for b, f in stage1.items()},
                    **{name: f["seconds"] for name, f in certified.items()}},
    }
    write_result("mrs_localization_tuning", config, results,
                 images={key: args.n for key in results if key.startswith(("clean_accuracy", "certified_accuracy",
                                                                           "coverage", "adversarial"))})


if __name__ == "__main__":
    main()
