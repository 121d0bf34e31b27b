"""FNC on CIFAR-10: clean and universal-patch accuracy with and without feature norm clipping.

Model: the fine-tuned ResNet-56 (``checkpoints/cifar10_resnet56_finetuned.pt``); FNC after all 27 residual
blocks, alpha 1.5 in every stage, the model's own BatchNorm statistics: chosen on training images by
``benchmarks/fnc_alpha_tuning.py`` (``benchmarks/results/fnc_alpha_tuning.json``; the paper's CIFAR-10 alpha 1.2
cost more clean accuracy than allowed). ``--alpha 1.2 --recalibration-n 50000`` gives the earlier setting.
Data: 1,000 class-balanced shared test images (seed 0).

Attacks (the paper's protocol, section 4.1): universal patches, 10% of the image (10x10 px), square, targeted
at class "dog" (the paper's CIFAR-10 target), trained on 1,000 class-balanced training images (seed 1,
disjoint from the test images) *against each estimator they are evaluated on* (the FNC numbers come from
patches trained through FNC), pasted at a uniformly random location per test image (seed 2):
- AdvP: ART ``AdversarialPatchPyTorch`` (Adam);
- LaVAN: :func:`art_patch_defenses.attacks.lavan_patch` (signed gradient steps through ``loss_gradient``).
Adversarial accuracy counts a test image as correct when the patched image is still classified as its label.

Run: ``.venv/bin/python benchmarks/fnc_cifar10.py`` (about 30 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracy, median_predict_seconds, write_result  # noqa: E402

from art_patch_defenses.attacks import adversarial_patch, lavan_patch  # noqa: E402
from art_patch_defenses.attacks.masked import seed_art_random_start  # noqa: E402
from art_patch_defenses.data import CIFAR10_CLASSES, load_dataset  # noqa: E402
from art_patch_defenses.fnc import fnc_classifier  # noqa: E402
from art_patch_defenses.geometry import paste_patch, patch_area_fraction, patch_shape, random_locations  # noqa: E402
from art_patch_defenses.models import build_model, make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402

TARGET = CIFAR10_CLASSES.index("dog")


def alpha_setting(text: str) -> float | list[float]:
    """``--alpha``: one number for every FNC layer, or ``a1,a2,a3``, one per stage of 9 residual blocks."""
    values = [float(value) for value in text.split(",")]
    if len(values) not in (1, 3) or not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"one positive alpha or three (a1,a2,a3, one per stage), got {text!r}")
    return values[0] if len(values) == 1 else [value for value in values for _ in range(9)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--alpha", type=alpha_setting, default="1.5,1.5,1.5",
                        help="one alpha, or one per stage of 9 blocks as a1,a2,a3 (fnc_alpha_tuning.py's candidates)")
    parser.add_argument("--n-fnc", type=int, default=None, help="FNC layers (default: every block)")
    parser.add_argument("--patch-train-n", type=int, default=1000)
    parser.add_argument("--advp-passes", type=int, default=15, help="AdvP passes over the patch training set")
    parser.add_argument("--lavan-steps", type=int, default=250)
    parser.add_argument("--recalibration-n", type=int, default=0,
                        help="training images for BN re-estimation (0: keep the model's BN statistics)")
    parser.add_argument("--out", default="fnc_cifar10", help="result name under benchmarks/results/")
    parser.add_argument("--defended-only", action="store_true",
                        help="attack only the FNC model (for an ablation whose undefended rows exist already)")
    parser.add_argument("--timing-repeats", type=int, default=7)
    parser.add_argument("--weights", default="finetuned", help="weights tag or path of cifar_resnet56")
    args = parser.parse_args()
    torch.manual_seed(0)

    weights = weights_path("cifar_resnet56", args.weights)
    undefended = make_classifier(build_model("cifar_resnet56", args.weights), "cifar_resnet56")
    defended = fnc_classifier(undefended, alpha=args.alpha, n_fnc=args.n_fnc)
    start = time.time()
    if args.recalibration_n > 0:
        defended.recalibrate_batchnorm(load_dataset("cifar10", "train", n=min(args.recalibration_n, 50000), seed=0).x)
    recalibration_seconds = time.time() - start

    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    patch_train = load_dataset("cifar10", "train", n=args.patch_train_n, seed=1)
    image_hw = test.x.shape[2:]
    shape = patch_shape(0.1, image_hw)
    locations = random_locations(len(test), image_hw, shape, seed=2)

    results: dict = {
        "clean_accuracy_undefended": accuracy(undefended, test.x, test.y),
        "clean_accuracy_fnc": accuracy(defended, test.x, test.y),
    }
    seconds: dict = {"bn_recalibration": round(recalibration_seconds, 1)}
    rows = (("fnc", defended),) if args.defended_only else (("undefended", undefended), ("fnc", defended))
    for label, classifier in rows:
        start = time.time()
        seed_art_random_start(0)  # ART draws AdvP's placements and batches from the global generators
        patch = adversarial_patch(
            classifier, patch_train.x, patch_train.y, patch_size=shape, target=TARGET, max_iter=args.advp_passes,
            learning_rate=0.1, batch_size=64,
        )
        patched, _ = paste_patch(test.x, patch, locations)
        results[f"adversarial_accuracy_{label}_advp"] = accuracy(classifier, patched, test.y)
        results[f"target_rate_{label}_advp"] = float(np.mean(classifier.predict(patched).argmax(1) == TARGET))
        seconds[f"advp_{label}"] = round(time.time() - start, 1)
        start = time.time()
        patch = lavan_patch(
            classifier, patch_train.x, patch_train.y, patch_size=shape, target=TARGET, max_iter=args.lavan_steps,
            step_size=0.01, batch_size=64, seed=3,
        )
        patched, _ = paste_patch(test.x, patch, locations)
        results[f"adversarial_accuracy_{label}_lavan"] = accuracy(classifier, patched, test.y)
        results[f"target_rate_{label}_lavan"] = float(np.mean(classifier.predict(patched).argmax(1) == TARGET))
        seconds[f"lavan_{label}"] = round(time.time() - start, 1)

    timing_batch = test.x[:256]
    undefended_seconds = median_predict_seconds(undefended, timing_batch, args.timing_repeats)
    defended_seconds = median_predict_seconds(defended, timing_batch, args.timing_repeats)
    results["alpha"] = args.alpha
    results["fnc_layers"] = defended.fnc_layer_count
    results["forward_time_ratio"] = defended_seconds / undefended_seconds
    results["predict_seconds_batch256_undefended"] = undefended_seconds
    results["predict_seconds_batch256_fnc"] = defended_seconds
    results["seconds"] = seconds

    config = {
        "model": "cifar_resnet56",
        "weights": weights.name,
        "weights_sha256": sha256_of(weights),
        "fnc": {
            "alpha": args.alpha, "layers": f"after {defended.fnc_layer_count} residual blocks",
            "bn_recalibration": f"one pass over {min(args.recalibration_n, 50000)} shared training images"
            if args.recalibration_n > 0 else "none (the fine-tuned model's statistics)",
        },
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        "attacks": {
            "common": {
                "patch_pixels": list(shape), "patch_area_fraction": patch_area_fraction(shape, image_hw),
                "shape": "square", "targeted": True, "target_class": f"{TARGET} (dog)",
                "trained_on": f"{args.patch_train_n} class-balanced shared train images, seed 1",
                "trained_against": "the estimator it is evaluated on (white-box, through FNC for the FNC rows)",
                "placement": "uniformly random top-left per test image, seed 2, pixel-exact paste",
            },
            "advp": {
                "implementation": "art.attacks.evasion.AdversarialPatchPyTorch (rotation 0, fixed scale, Adam)",
                "learning_rate": 0.1, "passes": args.advp_passes, "batch_size": 64,
                "random_seed": "seed_art_random_start(0) before each patch",
            },
            "lavan": {
                "implementation": "art_patch_defenses.attacks.lavan_patch (signed gradient, random integer "
                "locations)", "step_size": 0.01, "steps": args.lavan_steps, "batch_size": 64,
            },
        },
        "timing": f"predict on a batch of 256, median of {args.timing_repeats} runs after a warm-up, same process",
    }
    fractions = ("clean_accuracy_", "adversarial_accuracy_", "target_rate_")  # of the test images
    write_result(args.out, config, results,
                 images={key: len(test) for key in results if key.startswith(fractions)})


if __name__ == "__main__":
    main()
