"""FNC ablation on CIFAR-10: clean accuracy against alpha, the number of FNC layers and BN re-estimation.

Model: the fine-tuned ResNet-56, FNC after all 27 blocks (alpha = inf is the model without clipping).
Selection data: 2,000 shared test images drawn (seed 7) from those *outside* the 1,000-image slice that
``fnc_cifar10.py`` reports on, so choosing a setting here does not tune on the reported slice. BatchNorm:
kept as trained (``no_bn``), or re-estimated with one pass over 10,000 class-balanced training images (seed 0)
with the training augmentation (``bn``) or without it (``bn_unaugmented``).

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
    test = load_dataset("cifar10", "test")
    outside = np.ones(len(test), dtype=bool)
    outside[balanced_subset(test.y, 1000, 0)] = False
    pick = np.random.default_rng(7).choice(np.flatnonzero(outside), 2000, replace=False)
    x, y = test.x[pick], test.y[pick]
    recalibration = load_dataset("cifar10", "train", n=10000, seed=0)
    results: dict = {"clean_accuracy_undefended": accuracy(base, x, y)}
    for alpha in ALPHAS:
        label = f"alpha_{alpha}"
        results[f"clean_accuracy_{label}_no_bn"] = accuracy(fnc_classifier(base, alpha=alpha), x, y)
        for suffix, augment in (("bn", True), ("bn_unaugmented", False)):
            defended = fnc_classifier(base, alpha=alpha)
            defended.recalibrate_batchnorm(recalibration.x, augment=augment, verbose=False)
            results[f"clean_accuracy_{label}_{suffix}"] = accuracy(defended, x, y)
        print(label, {k: v for k, v in results.items() if label in k}, flush=True)
    weights = weights_path("cifar_resnet56", "finetuned")
    config = {
        "model": "cifar_resnet56", "weights": weights.name, "weights_sha256": sha256_of(weights),
        "data": "2,000 shared test images outside fnc_cifar10's 1,000-image slice (seed 7)",
        "bn_recalibration": "one pass over 10,000 class-balanced shared train images (seed 0)",
        "alphas": [str(a) for a in ALPHAS], "layers": "all 27 residual blocks",
    }
    write_result("fnc_alpha_sweep", config, results, images=dict.fromkeys(results, len(y)))


if __name__ == "__main__":
    main()
