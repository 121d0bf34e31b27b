"""PatchCleanser's base classifier with and without mirror averaging, chosen on held-out training images.

PatchCleanser (Xiang et al., USENIX Security 2022, https://arxiv.org/abs/2108.09135) certifies any base classifier,
so the base may classify each one- and two-mask image together with its horizontal mirror
(:class:`~art_patch_defenses.models.flip_average.FlipAverage`: the mean of the two log-softmax outputs), at twice
the forward passes. Model: ``checkpoints/cifar10_resnet<depth>_patchcleanser.pt`` (``--depth``, 56 by default), k
masks per axis (``--masks-per-axis``, 6), 5x5 patch, masked pixels set to the normalisation mean.

Data: the ``--n`` class-balanced training images (seed 0) that the masked fine-tuning runs of ``patchcleanser.train
--holdout n`` left out (the ResNet-56's runs used 300; the fine-tuned model they started from had seen them). They
are never test images, which is what the choice needs (``patchcleanser_cifar10.py --flip-average`` measures it on
the test slice).

Per base classifier: ``clean_accuracy`` (double masking) and ``certified_accuracy_5x5`` from
:meth:`PyTorchPatchCleanser.certify`, and its seconds per image. Mirror averaging is chosen if it certifies more than
``TIE`` above the plain model (a tie keeps the plain model, at half the cost). Each setting's figures are kept under
``outputs/benchmarks/patchcleanser_flip_tuning/`` as they finish, so an interrupted run resumes. Run:
``.venv/bin/python benchmarks/patchcleanser_flip_tuning.py``; writes
``benchmarks/results/patchcleanser_flip_tuning.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, keep_figures, kept_figures, write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.models import sha256_of  # noqa: E402
from art_patch_defenses.models.checkpoints import positive_int  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.models.train_embedded import holdout_split  # noqa: E402
from art_patch_defenses.patchcleanser import get_art_model  # noqa: E402

STORE = ROOT / "outputs" / "benchmarks" / "patchcleanser_flip_tuning"
TIE = 0.005
BASES = {"plain": False, "flip_average": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), default=56, help="CIFAR ResNet depth")
    parser.add_argument("--n", type=positive_int, default=300, help="held-out training images (patchcleanser.train)")
    parser.add_argument("--masks-per-axis", type=positive_int, default=6)
    args = parser.parse_args()

    model = f"cifar_resnet{args.depth}"
    train = load_dataset("cifar10", "train")
    _, held_out = holdout_split(train, args.n)
    x, y = train.x[held_out], train.y[held_out]
    settings = {"weights_sha256": sha256_of(weights_path(model, "patchcleanser")), "n": args.n,
                "masks_per_axis": args.masks_per_axis}
    STORE.mkdir(parents=True, exist_ok=True)
    figures: dict = {}
    for base, flip in BASES.items():
        store = STORE / f"{model}_k{args.masks_per_axis}_{base}.json"
        kept = kept_figures(store, settings)
        if kept is None:
            estimator = get_art_model({"name": model, "weights": "patchcleanser", "patch_size": 5,
                                       "masks_per_axis": args.masks_per_axis, "flip_average": flip})
            began = time.time()
            found = estimator.certify(x, y)
            kept = {"clean_accuracy": float(np.mean(found.prediction == y)),
                    "certified_accuracy_5x5": float(found.certified.mean()),
                    "seconds_per_image_certify": round((time.time() - began) / len(y), 3)}
            keep_figures(store, settings, kept)
        figures[base] = kept
        print(f"{base}: {kept}", flush=True)

    gain = figures["flip_average"]["certified_accuracy_5x5"] - figures["plain"]["certified_accuracy_5x5"]
    results: dict = {"chosen_base": "flip_average" if gain > TIE else "plain", "certified_gain_flip_average": gain}
    for base, kept in figures.items():
        for key, value in kept.items():
            results[f"{key}_{base}"] = value
    config = {
        "model": model, "weights": f"cifar10_resnet{args.depth}_patchcleanser.pt", **settings,
        "bases": {"plain": "the model", "flip_average": "FlipAverage: the mean of the log-softmax outputs on each "
                                                        "image and its horizontal mirror"},
        "fill": "normalisation mean (zero in the normalised input)", "patch": [5, 5],
        "data": f"the {args.n} class-balanced shared CIFAR-10 JPEG training images (seed 0) that "
                f"`patchcleanser.train --holdout {args.n}` leaves out",
        "choice": f"flip_average if it certifies more than {TIE} above plain, else plain (half the cost)",
    }
    write_result("patchcleanser_flip_tuning", config, results,
                 images={key: args.n for key in results if key.startswith(("clean_accuracy", "certified_accuracy"))})


if __name__ == "__main__":
    main()
