"""Fine-tune the embedded MNIST CNN as MRS's base classifier once, and commit it (``mnist_mrs_cnn``, ``"embedded"``).

Starting from the committed ``mnist_cnn`` ``"embedded"`` weights: Gaussian noise (sigma 64/255) inside one random
square of 9 to 15 px per digit, the size of the region MRS smooths (a 5x5 localisation block widened by 3 px on
each side), on unshifted digits. Run: ``python -m art_patch_defenses.mrs.train_embedded``; the checkpoint goes to
``checkpoints/mnist_embedded_mrs_cnn.pt`` with its log and its record in ``checkpoints.json``. ``--holdout 500``
trains on the other 3,500 training digits and logs MRS's clean and certified accuracy (L2 radius of at least
25/255 inside the localised region) on the 500 left out (class-balanced): how the recipe was chosen, without the
test digits.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
from torch import nn

from art_patch_defenses.data import ImageDataset
from art_patch_defenses.models.checkpoints import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD, build_model, make_classifier
from art_patch_defenses.models.train_embedded import (
    Log,
    add_run_arguments,
    check_embedded_out,
    holdout_split,
    plain_accuracy,
    run_embedded_training,
)
from art_patch_defenses.mrs.estimator import PyTorchMRS
from art_patch_defenses.mrs.registration import MNIST_MODEL, MNIST_MODEL_CHECKPOINT
from art_patch_defenses.mrs.smoothing import from_255
from art_patch_defenses.mrs.training import train_mrs_base

#: The committed recipe (chosen on the 500-digit training holdout): seconds to a minute on one thread.
MRS_MNIST_EPOCHS = 10
MRS_MNIST_SIGMA_255 = 64.0
MRS_MNIST_WIDTHS = (9, 15)
#: The certifier settings of the --holdout report (the default scenario's).
MRS_MNIST_BLOCK = 5
MRS_MNIST_STRIDE = 4
MRS_MNIST_TAU = 8.0
MRS_MNIST_SAMPLES = 50
MRS_MNIST_N0 = 10
MRS_MNIST_ALPHA = 0.001
INIT = ("mnist_cnn", "embedded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma", type=non_negative_float, default=MRS_MNIST_SIGMA_255,
                        help="noise std in 0-255 units (training, and the --holdout report's certifier)")
    parser.add_argument("--width-min", type=positive_int, default=MRS_MNIST_WIDTHS[0])
    parser.add_argument("--width-max", type=positive_int, default=MRS_MNIST_WIDTHS[1])
    parser.add_argument("--epochs", type=positive_int, default=MRS_MNIST_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--augment", action="store_true", help="random crops (padding 4), off in the recipe")
    parser.add_argument("--block", type=positive_int, default=MRS_MNIST_BLOCK,
                        help="localisation block side of the --holdout report's certifier")
    parser.add_argument("--tau", type=non_negative_float, default=MRS_MNIST_TAU,
                        help="localisation abstain threshold of the --holdout report's certifier")
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training digits and report on those")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.width_min > args.width_max:
        parser.error(f"--width-min {args.width_min} exceeds --width-max {args.width_max}")
    if max(args.width_max, args.block) > 32:
        parser.error("--width-max and --block must fit a 32-pixel digit")
    if args.holdout and args.sigma == 0:
        parser.error("the --holdout report smooths with --sigma: it must be > 0")
    check_embedded_out(parser, MNIST_MODEL_CHECKPOINT, args.out, init=lambda: build_model(*INIT))

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        fit, held_out = holdout_split(train, args.holdout)
        model = build_model(*INIT)
        train_mrs_base(model, train.x[fit], train.y[fit], MNIST_MEAN, MNIST_STD, sigma=from_255(args.sigma),
                       width_min=args.width_min, width_max=args.width_max, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, augment=args.augment, flip=False, seed=args.seed,
                       verbose=False, log=log)
        if len(held_out):
            certifier = make_classifier(model, MNIST_MODEL, estimator_class=PyTorchMRS, sigma=from_255(args.sigma),
                                        sample_size=MRS_MNIST_SAMPLES, n0=MRS_MNIST_N0, alpha=MRS_MNIST_ALPHA,
                                        patch_size=args.block, stride=MRS_MNIST_STRIDE, tau=args.tau)
            found = certifier.certify(train.x[held_out], train.y[held_out])
            clean = np.mean(found.prediction == train.y[held_out])
            log(f"holdout {len(held_out)} digits, sigma {args.sigma}/255, block {args.block}, tau {args.tau}: clean "
                f"{clean:.4f} certified {np.mean(found.certified):.4f} abstain {np.mean(found.prediction < 0):.4f}")
        return model, {"arch": "mnist_cnn", "noise_sigma_255": args.sigma,
                       "square_widths": [args.width_min, args.width_max], "epochs": args.epochs, "lr": args.lr,
                       "batch_size": args.batch_size, "augment": args.augment, "holdout": args.holdout,
                       "fit_images": len(fit)}

    run_embedded_training(MNIST_MODEL_CHECKPOINT, "art_patch_defenses.mrs.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, init=INIT,
                          evaluate=None if args.holdout else plain_accuracy(MNIST_MEAN, MNIST_STD))


if __name__ == "__main__":
    main()
