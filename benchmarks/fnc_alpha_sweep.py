"""FNC ablation on CIFAR-10: clean accuracy against alpha, the number of FNC layers and BN re-estimation.

Model: the fine-tuned ResNet-56, FNC after all 27 blocks (alpha = inf is the model without clipping).
BatchNorm: kept as trained (``no_bn``), or re-estimated with one pass over 10,000 class-balanced training images
(seed 0) with the training augmentation (``bn``) or without it (``bn_unaugmented``). Selection data: 2,000
class-balanced training images (seed 7) outside those 10,000, so the choice never sees a test image. The model was
fine-tuned on every training image, so its clean accuracy there runs higher than on test images: compare the
settings with one another, not with test figures.

Run: ``.venv/bin/python benchmarks/fnc_alpha_sweep.py`` (writes ``benchmarks/results/fnc_alpha_sweep.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracy, write_result  # noqa: E402

from art_patch_defenses.data import balanced_subset, load_dataset  # noqa: E402
from art_patch_defenses.fnc import fnc_classifier  # noqa: E402
from art_patch_defenses.models import build_model, make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402

ALPHAS = (float("inf"), 1.2, 1.5, 2.0)


def main() -> None:
    base = make_classifier(build_model("cifar_resnet56", "finetuned"), "cifar_resnet56")
    train = load_dataset("cifar10", "train")
    recalibration = balanced_subset(train.y, 10000, 0)  # the images load_dataset(..., n=10000, seed=0) gives
    outside = np.setdiff1d(np.arange(len(train)), recalibration)
    pick = outside[balanced_subset(train.y[outside], 2000, 7)]
    x, y = train.x[pick], train.y[pick]
    x_recalibration = train.x[recalibration]
    results: dict = {"clean_accuracy_undefended": accuracy(base, x, y)}
    for alpha in ALPHAS:
        label = f"alpha_{alpha}"
        results[f"clean_accuracy_{label}_no_bn"] = accuracy(fnc_classifier(base, alpha=alpha), x, y)
        for suffix, augment in (("bn", True), ("bn_unaugmented", False)):
            defended = fnc_classifier(base, alpha=alpha)
            defended.recalibrate_batchnorm(x_recalibration, augment=augment, verbose=False)
            results[f"clean_accuracy_{label}_{suffix}"] = accuracy(defended, x, y)
        print(label, {k: v for k, v in results.items() if label in k}, flush=True)
    weights = weights_path("cifar_resnet56", "finetuned")
    config = {
        "model": "cifar_resnet56", "weights": weights.name, "weights_sha256": sha256_of(weights),
        "data": "2,000 class-balanced shared train images (seed 7) outside the 10,000 BatchNorm images",
        "bn_recalibration": "one pass over 10,000 class-balanced shared train images (seed 0)",
        "alphas": [str(a) for a in ALPHAS], "layers": "all 27 residual blocks",
    }
    write_result("fnc_alpha_sweep", config, results, images=dict.fromkeys(results, len(y)))


if __name__ == "__main__":
    main()
