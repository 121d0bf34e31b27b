"""Fine-tune the embedded MNIST CNN for PatchCleanser once, and commit it (``mnist_cnn``, tag ``"patchcleanser"``).

One or two masks of the 5x5 / 7x7 mask sets (k = 6) on three of four images, starting from the committed
``mnist_cnn`` ``"embedded"`` weights. Run: ``python -m art_patch_defenses.patchcleanser.train_embedded``; the
checkpoint goes to ``checkpoints/mnist_embedded_mnist_cnn_patchcleanser.pt`` with its log and its record in
``checkpoints.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torch import nn

from art_patch_defenses.data import ImageDataset
from art_patch_defenses.models.checkpoints import positive_float, positive_int, probability
from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD, build_model
from art_patch_defenses.models.train_embedded import (
    Log,
    add_run_arguments,
    check_embedded_out,
    plain_accuracy,
    run_embedded_training,
)
from art_patch_defenses.patchcleanser.registration import MNIST_CHECKPOINT
from art_patch_defenses.patchcleanser.training import train_patchcleanser

#: The recipe of the embedded PatchCleanser model (formerly trained on first use): seconds on one CPU thread.
PATCHCLEANSER_MNIST_EPOCHS = 3
INIT = ("mnist_cnn", "embedded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-sizes", type=positive_int, nargs="+", default=[5, 7])
    parser.add_argument("--masks-per-axis", type=positive_int, default=6)
    parser.add_argument("--probability", type=probability, default=0.75, help="share of training images masked")
    parser.add_argument("--epochs", type=positive_int, default=PATCHCLEANSER_MNIST_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    check_embedded_out(parser, MNIST_CHECKPOINT, args.out, init=lambda: build_model(*INIT))
    model = build_model(*INIT)  # built before seeding, as the earlier train-on-first-use recipe did

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        train_patchcleanser(model, train.x, train.y, MNIST_MEAN, MNIST_STD, patch_sizes=tuple(args.patch_sizes),
                            masks_per_axis=args.masks_per_axis, probability=args.probability, epochs=args.epochs,
                            lr=args.lr, batch_size=args.batch_size, flip=False, seed=args.seed, verbose=False,
                            log=log)
        return model, {"arch": "mnist_cnn", "patch_sizes": args.patch_sizes, "masks_per_axis": args.masks_per_axis,
                       "probability": args.probability, "fill": "normalisation mean", "epochs": args.epochs,
                       "lr": args.lr, "batch_size": args.batch_size}

    run_embedded_training(MNIST_CHECKPOINT, "art_patch_defenses.patchcleanser.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, init=INIT, evaluate=plain_accuracy(MNIST_MEAN, MNIST_STD))


if __name__ == "__main__":
    main()
