"""ScaleCert top-k and tau chosen on held-out training images: clean, certified detection, alerts and copies.

Model: ``checkpoints/cifar10_resnet<depth>_scalecert.pt`` (``--depth`` 20 or 56), or ``--checkpoint``. Data: the
``--holdout`` class-balanced training images (seed 0) that ``python -m art_patch_defenses.scalecert.train --holdout
1000`` leaves out of the ScaleCert training, so the choice never sees a test image (``scalecert_cifar10.py``
measures it on the test slice). The fine-tuned weights it started from did train on them, so the figures here run
above test figures: they rank settings, they are not results. Patch 5x5, r = 3. For every top-k in ``--top-k`` and
tau in ``--tau``: ``clean_accuracy`` (an alert is wrong), ``certified_detection_accuracy_5x5`` (``certify``),
``alert_rate_clean`` and ``candidate_windows_mean`` (occluded copies run per image). The chosen setting has the
largest certified detection accuracy among those that run at most ``--max-copies`` copies per image (default 67.6,
the paper's CIFAR-10 budget); ties go to the higher clean accuracy, then the fewer copies.

Tau only sets how the 676 windows of 7 px merge (``windows.merge_group``): tau in [9/49, 16/49) (0.18 to 0.33)
gives 49 merged windows of 10 px, [16/49, 25/49) gives 81 of 9 px, over the budget once nearly all meet R (as they
do on CIFAR-10), and a smaller tau gives fewer, larger windows, which occlude more of every copy. So by default
only tau 0.3 is run and the grid is over top-k.

``--flip-average`` runs every setting also with each image and occluded copy scored together with its mirror
(``flip_average``, twice the forward passes, so a mirrored setting counts twice its copies against the budget)
and writes ``..._flip.json``.

Run: ``.venv/bin/python benchmarks/scalecert_holdout_tuning.py --depth 56`` (about 3 minutes per setting on 2
threads); writes ``benchmarks/results/scalecert_holdout_tuning[_resnet56].json``. The mirror against none, at the
ResNet-56's top-k: ``.venv/bin/python benchmarks/scalecert_holdout_tuning.py --depth 56 --top-k 0.4 --flip-average
--max-copies 100``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracy_intervals, write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.models import sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.models.train_embedded import holdout_split  # noqa: E402
from art_patch_defenses.scalecert import get_art_model  # noqa: E402

PAPER_COPIES = 67.6  # the paper's mean occluded copies per CIFAR-10 image at its operating point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), default=56, help="CIFAR ResNet depth")
    parser.add_argument("--checkpoint", default=None, help="weights file (default: the depth's 'scalecert' tag)")
    parser.add_argument("--holdout", type=int, default=1000, help="as the training run's --holdout")
    parser.add_argument("--top-k", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3, 0.4])
    parser.add_argument("--tau", type=float, nargs="+", default=[0.3])
    parser.add_argument("--max-copies", type=float, default=PAPER_COPIES,
                        help="forward passes per image allowed (a mirrored copy counts twice)")
    parser.add_argument("--flip-average", action="store_true", help="run every setting also with the mirror")
    args = parser.parse_args()

    model = f"cifar_resnet{args.depth}"
    path = Path(args.checkpoint) if args.checkpoint else weights_path(model, "scalecert")
    weights_sha256 = sha256_of(path)
    estimator = get_art_model({"name": model, "weights": str(path), "top_k": args.top_k[0], "patch_size": 5,
                               "tau": args.tau[0]})
    train = load_dataset("cifar10", "train")
    held_out = holdout_split(train, args.holdout)[1]
    x, y = train.x[held_out], train.y[held_out]

    rows = []
    for top_k, tau, flip in itertools.product(args.top_k, args.tau, (False, True) if args.flip_average else (False,)):
        estimator.set_params(top_k=top_k, tau=tau, flip_average=flip)
        start = time.time()
        found = estimator.certify(x, y)
        seconds = (time.time() - start) / len(x)
        copies = float(estimator.candidate_windows(x).mean())
        row = {"top_k": top_k, "tau": tau, "flip_average": flip,
               "clean_accuracy": float(np.mean(found.prediction == y)),
               "certified_detection_accuracy_5x5": float(found.certified.mean()),
               "alert_rate_clean": float(found.alert.mean()),
               "candidate_windows_mean": copies,
               "forward_passes_per_image": (1 + copies) * (2 if flip else 1),
               "seconds_per_image": seconds}
        row["intervals"] = accuracy_intervals(row, dict.fromkeys(
            ("clean_accuracy", "certified_detection_accuracy_5x5"), len(y)))
        rows.append(row)
        print({k: v for k, v in row.items() if k != "intervals"}, flush=True)
    within = [row for row in rows if row["candidate_windows_mean"] * (2 if row["flip_average"] else 1)
              <= args.max_copies]
    chosen = max(within, key=lambda row: (row["certified_detection_accuracy_5x5"], row["clean_accuracy"],
                                          -row["forward_passes_per_image"])) if within else None
    results = {"chosen": None if chosen is None else {key: chosen[key] for key in ("top_k", "tau", "flip_average")},
               "by_top_k_and_tau": rows}
    config = {"checkpoint": path.name, "checkpoint_sha256": weights_sha256, "model": model,
              "superficial_layer": estimator.superficial_layer, "r": estimator.r, "patch": "5x5 px (2.4%)",
              "data": f"{args.holdout} class-balanced CIFAR-10 training images (seed 0) held out of the "
                      "ScaleCert training run (art_patch_defenses.models.train_embedded.holdout_split)",
              "max_copies": args.max_copies}
    write_result("scalecert_holdout_tuning" + ("" if args.depth == 20 else f"_resnet{args.depth}")
                 + ("_flip" if args.flip_average else ""), config, results)


if __name__ == "__main__":
    main()
