"""Fine-tune the embedded MNIST CNN for ScaleCert once, and commit it (``mnist_cnn``, tag ``"scalecert"``).

SIN after ``features.1`` (top-k 0.1, winner-take-all) and occluding windows for 5 and 7 px patches, starting
from the committed ``mnist_cnn`` ``"embedded"`` weights. Run: ``python -m art_patch_defenses.scalecert.train_embedded``;
the checkpoint goes to ``checkpoints/mnist_embedded_mnist_cnn_scalecert.pt`` with its log and its record in
``checkpoints.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torch import nn

from art_patch_defenses.data import ImageDataset
from art_patch_defenses.models.checkpoints import fraction, positive_float, positive_int
from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD, build_model
from art_patch_defenses.models.train_embedded import (
    Log,
    add_run_arguments,
    check_embedded_out,
    plain_accuracy,
    run_embedded_training,
)
from art_patch_defenses.scalecert.registration import MNIST_CHECKPOINT
from art_patch_defenses.scalecert.sin import ScaleCertNet
from art_patch_defenses.scalecert.training import train_scalecert

#: The recipe of the embedded ScaleCert model (formerly trained on first use): seconds on one CPU thread.
SCALECERT_MNIST_EPOCHS = 3
INIT = ("mnist_cnn", "embedded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--superficial-layer", default="features.1")
    parser.add_argument("--top-k", type=fraction, nargs="+", default=[0.1], help="top-k rates, one drawn per batch")
    parser.add_argument("--patch-sizes", type=positive_int, nargs="+", default=[5, 7])
    parser.add_argument("--epochs", type=positive_int, default=SCALECERT_MNIST_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    check_embedded_out(parser, MNIST_CHECKPOINT, args.out, init=lambda: build_model(*INIT),
                       superficial_layer=lambda: ScaleCertNet(build_model(INIT[0]), args.superficial_layer,
                                                              args.top_k[0], (1, 32, 32)).remove())
    model = build_model(*INIT)  # built before seeding, as the earlier train-on-first-use recipe did

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        train_scalecert(model, args.superficial_layer, train.x, train.y, MNIST_MEAN, MNIST_STD,
                        top_k_choices=tuple(args.top_k), patch_sizes=tuple(args.patch_sizes), epochs=args.epochs,
                        lr=args.lr, batch_size=args.batch_size, seed=args.seed, verbose=False, log=log)
        top_k = args.top_k[0] if len(args.top_k) == 1 else args.top_k
        return model, {"arch": "mnist_cnn", "superficial_layer": args.superficial_layer, "top_k": top_k,
                       "patch_sizes": args.patch_sizes, "epochs": args.epochs, "lr": args.lr,
                       "batch_size": args.batch_size}

    run_embedded_training(MNIST_CHECKPOINT, "art_patch_defenses.scalecert.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, init=INIT, evaluate=plain_accuracy(MNIST_MEAN, MNIST_STD))


if __name__ == "__main__":
    main()
