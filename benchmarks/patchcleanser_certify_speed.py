"""PatchCleanser ``certify`` with its early stop against reading the whole prediction map: seconds and agreement.

Same weights and mask set as ``patchcleanser_cifar10.py`` (``--masks-per-axis``, default 6; 5x5 patch); ``--n``
class-balanced shared CIFAR-10 test images (seed 0). Both paths run in this one process, one after the other:
``full_map`` is :meth:`prediction_map` then :func:`certified_from_map` / :func:`double_masking_from_map` (every
one- and two-mask prediction of every image), ``certify`` stops at the first wrong label. ``agree`` must be true.

Run: ``.venv/bin/python benchmarks/patchcleanser_certify_speed.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.models import sha256_of  # noqa: E402
from art_patch_defenses.models.checkpoints import positive_int  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.patchcleanser import certified_from_map, double_masking_from_map, get_art_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=100)
    parser.add_argument("--masks-per-axis", type=positive_int, default=6)
    args = parser.parse_args()

    weights_sha256 = sha256_of(weights_path("cifar_resnet20", "patchcleanser"))
    estimator = get_art_model({"name": "cifar_resnet20", "weights": "patchcleanser", "patch_size": 5,
                               "masks_per_axis": args.masks_per_axis})
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    estimator.predict_base(test.x[:2])  # warm-up
    start = time.perf_counter()
    prediction_map = estimator.prediction_map(test.x, batch_size=estimator.certify_batch_size)
    full_certified = certified_from_map(prediction_map, test.y)
    full_prediction = double_masking_from_map(prediction_map)
    full_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = estimator.certify(test.x, test.y)
    certify_seconds = time.perf_counter() - start
    agree = bool(np.array_equal(result.certified, full_certified) and np.array_equal(result.prediction,
                                                                                    full_prediction))
    results = {
        "certified_accuracy_5x5": float(result.certified.mean()),
        "seconds_per_image_full_map": full_seconds / len(test),
        "seconds_per_image_certify": certify_seconds / len(test),
        "speedup": full_seconds / certify_seconds,
        "agree": agree,
    }
    config = {"model": "cifar_resnet20", "weights": "cifar10_resnet20_patchcleanser.pt",
              "weights_sha256": weights_sha256, "masks_per_axis": args.masks_per_axis, "patch": [5, 5],
              "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
              "timing": "wall-clock seconds of each path over all images, both in this process"}
    write_result(f"patchcleanser_certify_speed_k{args.masks_per_axis}", config, results,
                 images={"certified_accuracy_5x5": len(test)})
    if not agree:
        raise SystemExit("certify and the full prediction map disagree")


if __name__ == "__main__":
    main()
