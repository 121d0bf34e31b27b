"""Fine-tune a CIFAR ResNet for ScaleCert (winner-take-all with the SIN mask, random occluding windows).

Run, e.g.: ``python -m art_patch_defenses.scalecert.train --depth 20 --epochs 5``; the checkpoint goes to
``checkpoints/cifar10_resnet<depth>_scalecert.pt`` (registry tag ``"scalecert"``), with its command and log.
``--worst-of k`` trains each image on the highest-loss of ``k`` random windows (the certifier needs every window
right); ``--holdout n`` trains on the other training images and logs ScaleCert's clean accuracy, certified
detection and alert rate on the ``n`` left out (class-balanced, seed 0; first top-k, largest patch size; before and
after training), so a recipe is chosen without the test images.
"""

from __future__ import annotations

import argparse
import copy
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
    fraction,
    non_negative_int,
    open_run_log,
    positive_float,
    positive_int,
    probability,
)
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD, make_classifier
from art_patch_defenses.models.train_embedded import holdout_split
from art_patch_defenses.paths import checkpoints_dir
from art_patch_defenses.scalecert.estimator import PyTorchScaleCert
from art_patch_defenses.scalecert.sin import ScaleCertNet
from art_patch_defenses.scalecert.training import train_scalecert


def report_holdout(model: torch.nn.Module, name: str, args: argparse.Namespace, x: np.ndarray, y: np.ndarray,
                   log, when: str) -> None:
    """Log ScaleCert's clean accuracy (an alert is wrong), certified detection and alert rate on held-out
    training images, for the first top-k rate and the largest patch size."""
    if not len(x):
        return
    # A copy: the certifier hooks its own SIN into the model it wraps.
    certifier = make_classifier(copy.deepcopy(model).eval(), name, estimator_class=PyTorchScaleCert,
                                superficial_layer=args.superficial_layer, top_k=args.top_k[0],
                                patch_size=max(args.patch_sizes), r=args.r, tau=args.tau)
    found, side = certifier.certify(x, y), max(args.patch_sizes)
    log(f"holdout {when}: {len(x)} training images, {side}x{side} patch, top-k "
        f"{args.top_k[0]}, r {args.r}, tau {args.tau}: clean {np.mean(found.prediction == y):.4f} certified "
        f"{np.mean(found.certified):.4f} alerts {np.mean(found.alert):.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), default=20)
    parser.add_argument("--init", default="finetuned",
                        help="weights tag or a .pt path to start from (a path continues that checkpoint's record)")
    parser.add_argument("--superficial-layer", default="bn1")
    parser.add_argument("--top-k", type=fraction, nargs="+", default=[0.1, 0.15, 0.2],
                        help="top-k rates, one drawn per batch")
    parser.add_argument("--patch-sizes", type=positive_int, nargs="+", default=[2, 5])
    parser.add_argument("--r", type=positive_int, default=3)
    parser.add_argument("--tau", type=probability, default=0.3)
    parser.add_argument("--occlude-probability", type=probability, default=0.5)
    parser.add_argument("--worst-of", type=positive_int, default=1,
                        help="windows drawn per image, the highest-loss one trained on (1: a random window)")
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training images and report on those")
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.tau >= 1.0:
        parser.error(f"argument --tau: must be in [0, 1), got {args.tau}")
    name = f"cifar_resnet{args.depth}"
    out = args.out or checkpoints_dir() / f"cifar10_resnet{args.depth}_scalecert.pt"
    # Everything that can fail fails here, before the log (maybe the committed one) is rotated or rewritten.
    check_run_start(parser, out, init=lambda: build_model(name, args.init),
                    superficial_layer=lambda: ScaleCertNet(build_model(name), args.superficial_layer, args.top_k[0],
                                                           (3, 32, 32)).remove())
    train = load_dataset("cifar10", "train")
    try:
        fit, held_out = holdout_split(train, args.holdout)
    except ValueError as error:
        parser.error(str(error))
    command = "python -m art_patch_defenses.scalecert.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log, previous_log = open_run_log(out, command, Path(args.init) if args.init.endswith(".pt") else None)
    torch.manual_seed(args.seed)
    model = build_model(name, args.init)  # built again after seeding, as the recorded runs drew its initialisation
    start = time.time()
    settings = {"superficial_layer": args.superficial_layer, "top_k": args.top_k, "patch_sizes": args.patch_sizes,
                "r": args.r, "tau": args.tau, "occlude_probability": args.occlude_probability}
    if args.worst_of > 1 or args.holdout:  # recorded only where used: older records keep their settings
        settings |= {"worst_of": args.worst_of, "holdout": args.holdout}
    report_holdout(model, name, args, train.x[held_out], train.y[held_out], log, "before")
    train_scalecert(model, args.superficial_layer, train.x[fit], train.y[fit], CIFAR10_MEAN, CIFAR10_STD,
                    top_k_choices=args.top_k, patch_sizes=args.patch_sizes, r=args.r, tau=args.tau,
                    occlude_probability=args.occlude_probability, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, seed=args.seed, log=log, worst_of=args.worst_of)
    report_holdout(model, name, args, train.x[held_out], train.y[held_out], log, "after")
    finish_training_run(model, out, command, log, previous_log, arch=name, init=args.init, settings=settings,
                        epochs=args.epochs, lr=args.lr, train_images=len(fit), seconds=time.time() - start)


if __name__ == "__main__":
    main()
