"""Where a patch lands against PatchZero: the joint BPDA attack at one random place, the placement scan, a random
search that moves the patch, and the joint attack at the scanned place, for PatchZero in front of the fine-tuned
ResNet-20 and in front of the ResNet-20 fine-tuned on masked images (PatchCleanser's weights).

Design data, so TRAINING images only (never the test slices): 100 class-balanced shared CIFAR-10 training images
(seed 7); 5x5 patch (2.4%); places and patch contents from seed 0; white-box against the defended classifier
(PatchZero with BPDA), every figure judged by its predict. The detector's pixel precision / recall / F1 on the
small-step joint attack's patches (``*_detector_*``) measures whether it finds low-contrast patches made to hide
from it. ``*_undefended_*``: clean, the scan and the random search on the downstream alone, so each figure says
whether those attacks could fool the undefended part. Usage: ``python benchmarks/patchzero_placement.py`` (one
thread, about 30 minutes alone); ``--detector`` compares another detector checkpoint, ``--threshold`` sets its pixel
threshold, ``--downstream`` runs one downstream, ``--out`` names the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, write_result  # noqa: E402

from art_patch_defenses.attacks import placement_scan, random_search_patch  # noqa: E402
from art_patch_defenses.attacks.ensemble import find_patch_detector, patchzero_joint_pgd  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.metrics import mask_precision_recall_f1  # noqa: E402
from art_patch_defenses.evaluation.runner import build_estimator  # noqa: E402
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations  # noqa: E402

CONFIG = ROOT / "examples" / "configs" / "leaderboard" / "cifar10_patchzero.json"
DOWNSTREAM = {"finetuned": "finetuned", "mask_trained": "cifar10_resnet20_patchcleanser.pt"}
N, DATA_SEED, SEED, SHAPE, SCAN_STRIDE, QUERIES = 100, 7, 0, (5, 5), 2, 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", default="cifar10_patchzero_cifar_resnet20.pt",
                        help="detector checkpoint: a file name in checkpoints/ or a path")
    parser.add_argument("--downstream", choices=(*DOWNSTREAM, "both"), default="both")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the detector's pixel threshold (default: the config's, PatchZero's 0.5)")
    parser.add_argument("--out", default="patchzero_placement", help="result name under benchmarks/results/")
    args = parser.parse_args()
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:  # refused before minutes of data loading
        parser.error(f"--threshold is a probability in (0, 1), got {args.threshold}")
    downstreams = DOWNSTREAM if args.downstream == "both" else {args.downstream: DOWNSTREAM[args.downstream]}
    torch.set_num_threads(1)
    data = load_dataset("cifar10", "train", n=N, seed=DATA_SEED)
    x, y = data.x, data.y
    random_place = expand_masks(patch_masks((32, 32), SHAPE, random_locations(N, (32, 32), SHAPE, seed=SEED)), x)
    results: dict = {}
    for name, weights in downstreams.items():
        config = json.loads(CONFIG.read_text())
        config["model"]["model_kwargs"]["weights"] = weights
        config["defense"]["kwargs"]["path"] = args.detector
        if args.threshold is not None:
            config["defense"]["kwargs"]["threshold"] = args.threshold
        estimator = build_estimator(config)
        patchzero = find_patch_detector(estimator)

        def right(images: np.ndarray, estimator=estimator) -> np.ndarray:
            return estimator.predict(images, batch_size=100).argmax(1) == y  # PatchZero never abstains

        start = time.time()
        x_scan, scan_masks = placement_scan(estimator, x, y, SHAPE, SCAN_STRIDE, seed=SEED, batch_size=100)
        scanned_place = expand_masks(scan_masks, x)
        x_joint_small = patchzero_joint_pgd(estimator, patchzero, x, random_place, y, 0.01, 100, seed=SEED)
        found = mask_precision_recall_f1(patchzero.masks(x_joint_small, dilated=False), random_place[:, 0])
        outcomes = {
            "clean": right(x),
            "joint_random_place_step0.01x100": right(x_joint_small),
            "joint_random_place_step0.05x50": right(patchzero_joint_pgd(estimator, patchzero, x, random_place, y,
                                                                         0.05, 50, seed=SEED)),
            "placement_scan": right(x_scan),
            "random_search_moving": right(random_search_patch(estimator, x, y, SHAPE, QUERIES, seed=SEED,
                                                              batch_size=100)[0]),
            "joint_scanned_place_step0.05x50": right(patchzero_joint_pgd(estimator, patchzero, x, scanned_place, y,
                                                                          0.05, 50, seed=SEED)),
        }
        outcomes["worst_of_scan_search_joint_scanned"] = (outcomes["placement_scan"] & outcomes["random_search_moving"]
                                                          & outcomes["joint_scanned_place_step0.05x50"])
        # The same gradient-free attacks on the downstream alone: whether they could fool it at all.
        undefended = build_estimator({**config, "defense": None})
        undefended_outcomes = {
            "clean": x,
            "placement_scan": placement_scan(undefended, x, y, SHAPE, SCAN_STRIDE, seed=SEED, batch_size=100)[0],
            "random_search_moving": random_search_patch(undefended, x, y, SHAPE, QUERIES, seed=SEED,
                                                        batch_size=100)[0],
        }
        for key, images in undefended_outcomes.items():
            outcomes[f"undefended_{key}"] = undefended.predict(images, batch_size=100).argmax(1) == y
        for key, held in outcomes.items():
            results[f"{name}_{key}"] = float(held.mean())
        results.update({f"{name}_joint_random_place_step0.01x100_detector_{k}": v for k, v in found.items()})
        results[f"{name}_seconds"] = round(time.time() - start, 1)
    config = {
        "data": f"{N} class-balanced shared CIFAR-10 TRAINING images (seed {DATA_SEED}): design data, not test data",
        "defence": f"PatchZero ({args.detector}, BPDA) as in {CONFIG.name}"
                   + ("" if args.threshold is None else f", threshold {args.threshold}"),
        "downstream": downstreams,
        "patch": f"{SHAPE[0]}x{SHAPE[1]} (2.4%); random place and contents from seed {SEED}",
        "attacks": {"joint": "patchzero_joint_pgd (cross-entropy through BPDA minus the detector probability "
                             "inside the patch), eps 1, from uniform noise",
                    "placement_scan": f"stride {SCAN_STRIDE}, one seeded random binary patch per image",
                    "random_search_moving": f"random_search_patch, {QUERIES} queries, moves and repaints"},
        "threads": "one torch thread",
    }
    images = {key: N for key in results if not key.endswith("_seconds") and "_detector_" not in key}
    write_result(args.out, config, results, images=images)


if __name__ == "__main__":
    main()
