"""PatchCleanser's number of masks per axis k, chosen on training images (the benchmarks used the paper's k = 6).

More masks per axis make each mask smaller (on 32x32 for a 5x5 patch: k = 6 -> 9x9 masks, 7 -> 8x8, 10 -> 7x7), so
the one- and two-mask predictions see more of the object, at the cost of k^2 first-round and about k^4 / 2 second-round
forward passes per certified image (k is a parameter of the defence, Xiang et al., USENIX Security 2022,
https://arxiv.org/abs/2108.09135; smaller masks are expected to keep more right predictions). Model:
``checkpoints/cifar10_resnet20_patchcleanser.pt`` as ``patchcleanser_cifar10.py``, masked pixels set to the
normalisation mean.

Data: ``--n`` class-balanced training images (seed 5). The model was fine-tuned on every training image, so these
figures are not test figures; they are never test images, which is what the choice needs
(``patchcleanser_cifar10.py --masks-per-axis K`` measures it on the test slice).

Per k: ``clean_accuracy`` (double masking) and ``certified_accuracy_5x5`` from :meth:`PyTorchPatchCleanser.certify`,
and its seconds per image. The chosen k has the largest certified accuracy; every k within 0.005 of it counts as
tied and the smallest of those (the cheapest) is chosen.

Each k's figures are kept under ``outputs/benchmarks/patchcleanser_mask_tuning/`` as they finish, so an interrupted
run resumes. Run: ``.venv/bin/python benchmarks/patchcleanser_mask_tuning.py``; writes
``benchmarks/results/patchcleanser_mask_tuning.json``.
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
from art_patch_defenses.patchcleanser import get_art_model  # noqa: E402

STORE = ROOT / "outputs" / "benchmarks" / "patchcleanser_mask_tuning"
TIE = 0.005


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=100)
    parser.add_argument("--ks", type=positive_int, nargs="+", default=[6, 7, 10], help="masks per axis to compare")
    args = parser.parse_args()

    train = load_dataset("cifar10", "train", n=args.n, seed=5)
    settings = {"weights_sha256": sha256_of(weights_path("cifar_resnet20", "patchcleanser")), "n": args.n,
                "data_seed": 5}
    STORE.mkdir(parents=True, exist_ok=True)
    per_k: dict = {}
    for k in args.ks:
        estimator = get_art_model({"name": "cifar_resnet20", "weights": "patchcleanser", "patch_size": 5,
                                   "masks_per_axis": k})
        kept = kept_figures(STORE / f"k{k}.json", settings)
        if kept is None:
            began = time.time()
            found = estimator.certify(train.x, train.y)
            kept = {"clean_accuracy": float(np.mean(found.prediction == train.y)),
                    "certified_accuracy_5x5": float(found.certified.mean()),
                    "masks": len(estimator.masks()), "mask_side": int(estimator.masks()[0].sum(0).max()),
                    "seconds_per_image_certify": round((time.time() - began) / args.n, 3)}
            keep_figures(STORE / f"k{k}.json", settings, kept)
        per_k[k] = kept
        print(f"k {k}: {kept}", flush=True)

    best = max(figures["certified_accuracy_5x5"] for figures in per_k.values())
    chosen = min(k for k, figures in per_k.items() if figures["certified_accuracy_5x5"] >= best - TIE)
    results: dict = {"chosen_masks_per_axis": chosen}
    for k, figures in per_k.items():
        results[f"clean_accuracy_k{k}"] = figures["clean_accuracy"]
        results[f"certified_accuracy_5x5_k{k}"] = figures["certified_accuracy_5x5"]
        results[f"seconds_per_image_certify_k{k}"] = figures["seconds_per_image_certify"]
    config = {
        "model": "cifar_resnet20", "weights": "cifar10_resnet20_patchcleanser.pt", **settings,
        "masks": {str(k): {"masks": figures["masks"], "mask_side": figures["mask_side"]}
                  for k, figures in per_k.items()},
        "fill": "normalisation mean (zero in the normalised input)", "patch": [5, 5],
        "data": f"{args.n} class-balanced shared CIFAR-10 JPEG training images (seed 5); the model was trained on them",
        "choice": f"largest certified_accuracy_5x5; within {TIE} of it counts as tied, then the smallest k",
    }
    write_result("patchcleanser_mask_tuning", config, results,
                 images={key: args.n for key in results if key.startswith(("clean_accuracy", "certified_accuracy"))})


if __name__ == "__main__":
    main()
