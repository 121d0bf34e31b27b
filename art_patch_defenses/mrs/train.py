"""Fine-tune a CIFAR ResNet as the MRS base classifier (noise inside random squares) and save it as a checkpoint.

Run, e.g.: ``python -m art_patch_defenses.mrs.train --depth 20 --sigma 25 --epochs 3`` (sigma in the paper's 0-255
units); the checkpoint goes to ``checkpoints/cifar10_resnet<depth>_mrs.pt`` (registry tag ``"mrs"``). ``--holdout n``
trains on all but ``n`` class-balanced training images (seed 0), so that ``benchmarks/mrs_sigma_tuning.py --holdout n``
can choose between checkpoints and sigmas on images none of the noise training saw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from art_patch_defenses.data import load_dataset
from art_patch_defenses.models import build_model, save_checkpoint
from art_patch_defenses.models.checkpoints import (
    check_run_start,
    non_negative_float,
    non_negative_int,
    open_run_log,
    positive_float,
    positive_int,
    record_checkpoint,
)
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD
from art_patch_defenses.models.train_embedded import holdout_split
from art_patch_defenses.mrs.smoothing import from_255
from art_patch_defenses.mrs.training import train_mrs_base
from art_patch_defenses.paths import checkpoints_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), default=20)
    parser.add_argument("--init", default="finetuned",
                        help="weights tag or a .pt path to start from (a path continues that checkpoint's record)")
    parser.add_argument("--sigma", type=non_negative_float, default=25.0, help="noise std in 0-255 units")
    parser.add_argument("--width-min", type=positive_int, default=5)
    parser.add_argument("--width-max", type=positive_int, default=10)
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training images (seed 0)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="a new one when continuing a run (see train_classifier)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.width_min > args.width_max:
        parser.error(f"--width-min {args.width_min} exceeds --width-max {args.width_max}")
    name = f"cifar_resnet{args.depth}"
    out = args.out or checkpoints_dir() / f"cifar10_resnet{args.depth}_mrs.pt"
    # Everything that can fail fails here, before the log (maybe the committed one) is rotated or rewritten.
    check_run_start(parser, out, init=lambda: build_model(name, args.init))
    train = load_dataset("cifar10", "train")
    try:
        fit, _ = holdout_split(train, args.holdout)
    except ValueError as error:
        parser.error(str(error))
    command = "python -m art_patch_defenses.mrs.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log, previous_log = open_run_log(out, command, Path(args.init) if args.init.endswith(".pt") else None)
    torch.manual_seed(args.seed)
    model = build_model(name, args.init)  # built again after seeding, as the recorded runs drew its initialisation
    start = time.time()
    train_mrs_base(model, train.x[fit], train.y[fit], CIFAR10_MEAN, CIFAR10_STD, sigma=from_255(args.sigma),
                   width_min=args.width_min, width_max=args.width_max, epochs=args.epochs, lr=args.lr,
                   batch_size=args.batch_size, seed=args.seed, log=log)
    sha = save_checkpoint(model, out, arch=name, noise_sigma_255=args.sigma, square_widths=[args.width_min,
                                                                                             args.width_max])
    summary = {"checkpoint": out.name, "sha256": sha, "model": name, "init": args.init, "sigma_255": args.sigma,
               "square_widths": [args.width_min, args.width_max], "epochs": args.epochs, "lr": args.lr,
               "train_images": len(fit), "seconds": round(time.time() - start), "size_bytes": out.stat().st_size}
    if args.holdout:  # recorded only where used: older records keep their settings
        summary["holdout"] = args.holdout
    log(json.dumps(summary))
    record_checkpoint(out.parent / "checkpoints.json", out.name, summary, command, previous_log)


if __name__ == "__main__":
    main()
