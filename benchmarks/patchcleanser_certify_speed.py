"""PatchCleanser ``certify`` with its early stop against reading the whole prediction map, and the channels-last
layout against plain NCHW: seconds and agreement.

Same weights and mask set as ``patchcleanser_cifar10.py`` (``--depth``, default 20; ``--masks-per-axis``, default
6; 5x5 patch); ``--n`` class-balanced shared CIFAR-10 test images (seed 0). Every path runs in this one process:
``full_map`` is :meth:`prediction_map` then :func:`certified_from_map` / :func:`double_masking_from_map` (every
one- and two-mask prediction of every image), ``certify`` stops at the first wrong label; ``certify`` then runs
with ``channels_last`` False and True in turn, twice each (so a load that changes during the run falls on both).
``agree`` (every path gives the full map's answer) must be true.

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
    parser.add_argument("--depth", type=int, choices=(20, 56), default=20)
    args = parser.parse_args()

    name = f"cifar_resnet{args.depth}"
    weights_sha256 = sha256_of(weights_path(name, "patchcleanser"))
    estimator = get_art_model({"name": name, "weights": "patchcleanser", "patch_size": 5,
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
    results_by_path = [result]
    layout_seconds = {False: 0.0, True: 0.0}
    for channels_last in (False, True, False, True):
        estimator.set_params(channels_last=channels_last)
        start = time.perf_counter()
        results_by_path.append(estimator.certify(test.x, test.y))
        layout_seconds[channels_last] += time.perf_counter() - start
    agree = all(np.array_equal(found.certified, full_certified) and np.array_equal(found.prediction, full_prediction)
                for found in results_by_path)
    results = {
        "certified_accuracy_5x5": float(result.certified.mean()),
        "seconds_per_image_full_map": full_seconds / len(test),
        "seconds_per_image_certify": certify_seconds / len(test),
        "speedup": full_seconds / certify_seconds,
        "seconds_per_image_certify_nchw": layout_seconds[False] / (2 * len(test)),
        "seconds_per_image_certify_channels_last": layout_seconds[True] / (2 * len(test)),
        "channels_last_speedup": layout_seconds[False] / layout_seconds[True],
        "agree": agree,
    }
    config = {"model": name, "weights": f"cifar10_resnet{args.depth}_patchcleanser.pt",
              "weights_sha256": weights_sha256, "masks_per_axis": args.masks_per_axis, "patch": [5, 5],
              "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
              "timing": "wall-clock seconds of each path over all images, all in this process; full_map and the "
                        "first certify with the default channels_last layout; the layout pair averages two runs "
                        "each"}
    suffix = "" if args.depth == 20 else f"_resnet{args.depth}"
    write_result(f"patchcleanser_certify_speed_k{args.masks_per_axis}{suffix}", config, results,
                 images={"certified_accuracy_5x5": len(test)})
    if not agree:
        raise SystemExit("certify and the full prediction map disagree")


if __name__ == "__main__":
    main()
