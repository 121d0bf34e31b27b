"""Fine-tune a CIFAR ResNet for PatchCleanser (two masks from the 2x2 or 5x5 mask set per image).

Run, e.g.: ``python -m art_patch_defenses.patchcleanser.train --depth 20 --epochs 4``; the checkpoint goes to
``checkpoints/cifar10_resnet<depth>_patchcleanser.pt`` (registry tag ``"patchcleanser"``), with its command and log.
``--holdout n`` trains on the other training images and logs double masking's clean and certified accuracy on the
``n`` left out (class-balanced, seed 0; the largest patch size, about 1.4-2.5 s per image on one thread; before and
after training), so a recipe is chosen without the test images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from art_patch_defenses.data import load_dataset
from art_patch_defenses.models import build_model
from art_patch_defenses.models.checkpoints import (
    check_run_start,
    finish_training_run,
    non_negative_int,
    open_run_log,
    positive_float,
    positive_int,
    probability,
)
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD, make_classifier
from art_patch_defenses.models.train_embedded import holdout_split
from art_patch_defenses.patchcleanser.estimator import PyTorchPatchCleanser
from art_patch_defenses.patchcleanser.training import train_patchcleanser
from art_patch_defenses.paths import checkpoints_dir


def report_holdout(model: torch.nn.Module, name: str, args: argparse.Namespace, x: np.ndarray, y: np.ndarray,
                   log, when: str) -> None:
    """Log double masking's clean and certified accuracy on held-out training images for the largest patch size
    (the one the goals are set for)."""
    if not len(x):
        return
    side = max(args.patch_sizes)
    certifier = make_classifier(model.eval(), name, estimator_class=PyTorchPatchCleanser, patch_size=side,
                                masks_per_axis=args.masks_per_axis)
    found = certifier.certify(x, y)
    log(f"holdout {when}: {len(x)} training images, {side}x{side} patch, {args.masks_per_axis} masks per axis: "
        f"clean {np.mean(found.prediction == y):.4f} certified {np.mean(found.certified):.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), default=20)
    parser.add_argument("--init", default="finetuned",
                        help="weights tag or a .pt path to start from (a path continues that checkpoint's record)")
    parser.add_argument("--patch-sizes", type=positive_int, nargs="+", default=[2, 5])
    parser.add_argument("--masks-per-axis", type=positive_int, default=6)
    parser.add_argument("--probability", type=probability, default=0.75, help="share of training images masked")
    parser.add_argument("--worst-of", type=positive_int, default=1,
                        help="train on the highest-loss of this many mask draws per image (needs --probability 1)")
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training images and report on those")
    parser.add_argument("--epochs", type=positive_int, default=4)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="a new one when continuing a run (see train_classifier)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.worst_of > 1 and args.probability != 1.0:
        parser.error(f"--worst-of {args.worst_of} masks every image: it needs --probability 1, got {args.probability}")
    name = f"cifar_resnet{args.depth}"
    out = args.out or checkpoints_dir() / f"cifar10_resnet{args.depth}_patchcleanser.pt"
    # Everything that can fail fails here, before the log (maybe the committed one) is rotated or rewritten.
    check_run_start(parser, out, init=lambda: build_model(name, args.init))
    train = load_dataset("cifar10", "train")
    try:
        fit, held_out = holdout_split(train, args.holdout)
    except ValueError as error:
        parser.error(str(error))
    command = "python -m art_patch_defenses.patchcleanser.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log, previous_log = open_run_log(out, command, Path(args.init) if args.init.endswith(".pt") else None)
    torch.manual_seed(args.seed)
    model = build_model(name, args.init)  # built again after seeding, as the recorded runs drew its initialisation
    start = time.time()
    settings = {"patch_sizes": args.patch_sizes, "masks_per_axis": args.masks_per_axis,
                "probability": args.probability, "worst_of": args.worst_of, "fill": "normalisation mean"}
    if args.holdout:  # recorded only where used: older records keep their settings
        settings["holdout"] = args.holdout
    report_holdout(model, name, args, train.x[held_out], train.y[held_out], log, "before")
    train_patchcleanser(model, train.x[fit], train.y[fit], CIFAR10_MEAN, CIFAR10_STD, patch_sizes=args.patch_sizes,
                        masks_per_axis=args.masks_per_axis, probability=args.probability, worst_of=args.worst_of,
                        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, log=log)
    report_holdout(model, name, args, train.x[held_out], train.y[held_out], log, "after")
    finish_training_run(model, out, command, log, previous_log, arch=name, init=args.init, settings=settings,
                        epochs=args.epochs, lr=args.lr, train_images=len(fit), seconds=time.time() - start)


if __name__ == "__main__":
    main()
