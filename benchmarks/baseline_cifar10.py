"""Undefended baseline on CIFAR-10: clean accuracy and three white-box patch attacks.

Model: the fine-tuned ResNet-56 (``checkpoints/cifar10_resnet56_finetuned.pt``). Data: 1,000 class-balanced
images of the shared JPEG test split (seed 0). Attacks, untargeted, each at a random location per image
(seed 0):
- universal patch, 10% of the image (10x10 px), ART ``AdversarialPatchPyTorch`` trained on 1,000
  class-balanced *training* images (disjoint from the evaluation images);
- masked PGD, 5% (7x7 px), ART ``ProjectedGradientDescent`` with a per-sample mask, L-inf eps 1.0;
- masked AutoPGD, 5% (7x7 px), :class:`art_patch_defenses.attacks.MaskedAutoPGD`, L-inf eps 1.0.

Run: ``.venv/bin/python benchmarks/baseline_cifar10.py`` (about 20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracy, write_result  # noqa: E402

from art_patch_defenses.attacks import MaskedAutoPGD, adversarial_patch, masked_pgd  # noqa: E402
from art_patch_defenses.attacks.masked import seed_art_random_start  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.geometry import (  # noqa: E402
    expand_masks,
    paste_patch,
    patch_area_fraction,
    patch_masks,
    patch_shape,
    random_locations,
)
from art_patch_defenses.models import build_model, make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="evaluation images (class-balanced)")
    parser.add_argument("--patch-train-n", type=int, default=1000)
    parser.add_argument("--patch-epochs", type=int, default=5, help="passes over the patch training images")
    parser.add_argument("--pgd-iter", type=int, default=50)
    parser.add_argument("--apgd-iter", type=int, default=50)
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--weights", default="finetuned")
    args = parser.parse_args()

    weights = weights_path(args.model, args.weights)
    classifier = make_classifier(build_model(args.model, args.weights), args.model)
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    train = load_dataset("cifar10", "train", n=args.patch_train_n, seed=0)
    image_hw = test.x.shape[2:]
    results: dict = {}
    timings: dict = {}

    start = time.time()
    results["clean_accuracy"] = accuracy(classifier, test.x, test.y)
    timings["clean"] = time.time() - start

    universal_shape = patch_shape(0.1, image_hw)
    start = time.time()
    seed_art_random_start(0)  # ART draws AdvP's placements and batches from the global generators
    patch = adversarial_patch(
        classifier, train.x, train.y, patch_size=universal_shape, max_iter=args.patch_epochs, learning_rate=0.1,
        batch_size=64,
    )
    patched, _ = paste_patch(test.x, patch, random_locations(len(test), image_hw, universal_shape, seed=0))
    results["adversarial_accuracy_universal_patch_10pct"] = accuracy(classifier, patched, test.y)
    timings["universal_patch"] = time.time() - start

    masked_shape = patch_shape(0.05, image_hw)
    masks = expand_masks(patch_masks(image_hw, masked_shape, random_locations(len(test), image_hw, masked_shape, 1)),
                         test.x)
    start = time.time()
    x_pgd = masked_pgd(classifier, test.x, masks, test.y, eps=1.0, eps_step=0.05, max_iter=args.pgd_iter,
                       num_random_init=1, batch_size=125, seed=0)
    results["adversarial_accuracy_masked_pgd_5pct"] = accuracy(classifier, x_pgd, test.y)
    timings["masked_pgd"] = time.time() - start

    start = time.time()
    seed_art_random_start(0)  # AutoPGD's random start
    x_apgd = MaskedAutoPGD(classifier, eps=1.0, eps_step=0.25, max_iter=args.apgd_iter, batch_size=125).generate(
        test.x, test.y, masks
    )
    results["adversarial_accuracy_masked_apgd_5pct"] = accuracy(classifier, x_apgd, test.y)
    timings["masked_apgd"] = time.time() - start
    results["max_change_outside_patch"] = float(
        max(np.abs(x_pgd - test.x)[masks == 0].max(), np.abs(x_apgd - test.x)[masks == 0].max())
    )
    results["seconds"] = {k: round(v, 1) for k, v in timings.items()}

    config = {
        "model": args.model,
        "weights": str(weights.name),
        "weights_sha256": sha256_of(weights),
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        "attacks": {
            "universal_patch_10pct": {
                "implementation": "art.attacks.evasion.AdversarialPatchPyTorch (square, rotation 0, fixed scale)",
                "patch_pixels": list(universal_shape),
                "patch_area_fraction": patch_area_fraction(universal_shape, image_hw),
                "targeted": False, "optimizer": "Adam", "learning_rate": 0.1, "passes": args.patch_epochs,
                "batch_size": 64,
                "trained_on": f"{args.patch_train_n} class-balanced shared train images, seed 0",
                "placement": "uniformly random top-left per test image, seed 0 (pixel-exact paste)",
            },
            "masked_pgd_5pct": {
                "implementation": "art.attacks.evasion.ProjectedGradientDescent with a per-sample mask",
                "patch_pixels": list(masked_shape),
                "patch_area_fraction": patch_area_fraction(masked_shape, image_hw),
                "norm": "inf", "eps": 1.0, "eps_step": 0.05, "max_iter": args.pgd_iter, "num_random_init": 1,
                "targeted": False, "labels": "true labels",
                "placement": "uniformly random top-left per test image, seed 1",
            },
            "masked_apgd_5pct": {
                "implementation": "art_patch_defenses.attacks.MaskedAutoPGD (ART AutoProjectedGradientDescent "
                "confined to the mask)",
                "patch_pixels": list(masked_shape), "norm": "inf", "eps": 1.0, "eps_step": 0.25,
                "max_iter": args.apgd_iter, "nb_random_init": 1, "loss": "cross-entropy (estimator's own)",
                "targeted": False, "placement": "same locations as masked PGD",
            },
        },
    }
    accuracies = ("clean_accuracy", "adversarial_accuracy_universal_patch_10pct",
                  "adversarial_accuracy_masked_pgd_5pct", "adversarial_accuracy_masked_apgd_5pct")
    write_result("baseline_cifar10", config, results, images=dict.fromkeys(accuracies, len(test)))


if __name__ == "__main__":
    main()
