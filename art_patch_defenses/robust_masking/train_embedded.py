"""Train the MNIST BagNet of the embedded MNIST default once, and commit it (``mnist_bagnet``, tag ``"embedded"``).

Masked-feature training against 7x7 patches (5% of a 32x32 digit, as the default scenario) on the 4,000 embedded
training digits. Run: ``python -m art_patch_defenses.robust_masking.train_embedded``; the checkpoint goes to
``checkpoints/mnist_embedded_robust_masking_bagnet.pt`` with its log and its record in ``checkpoints.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn

from art_patch_defenses.data import ImageDataset
from art_patch_defenses.geometry import feature_window, window_masks
from art_patch_defenses.models.checkpoints import positive_float, positive_int
from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD
from art_patch_defenses.models.train_embedded import Log, add_run_arguments, check_embedded_out, run_embedded_training
from art_patch_defenses.models.training import normalise
from art_patch_defenses.robust_masking.backbones import build_backbone
from art_patch_defenses.robust_masking.registration import MNIST_BAGNET_CHECKPOINT
from art_patch_defenses.robust_masking.training import train_robust_masking

#: The recipe of the embedded MNIST BagNet (formerly trained on first use): about a minute on one CPU thread.
MNIST_BAGNET_EPOCHS = 3
#: The patch side it is trained against: 5% of a 32x32 digit, as the default scenario.
MNIST_BAGNET_PATCH = 7


@torch.no_grad()
def global_accuracy(model: nn.Module, test: ImageDataset) -> float:
    """Top-1 accuracy of the summed local logits (the undefended vote), for the record."""
    logits = model.eval()(normalise(torch.from_numpy(test.x), MNIST_MEAN, MNIST_STD)).sum(dim=(1, 2))
    return float((logits.argmax(1).numpy() == test.y).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=positive_int, default=MNIST_BAGNET_PATCH)
    parser.add_argument("--epochs", type=positive_int, default=MNIST_BAGNET_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=0.05)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    check_embedded_out(parser, MNIST_BAGNET_CHECKPOINT, args.out)

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        backbone = build_backbone("mnist_bagnet")
        window = feature_window(args.patch_size, backbone.receptive_field[0], backbone.stride[0])
        windows = window_masks(backbone.feature_map_size((32, 32)), (window, window))
        train_robust_masking(backbone, train.x, train.y, windows, MNIST_MEAN, MNIST_STD, epochs=args.epochs,
                             lr=args.lr, batch_size=args.batch_size, flip=False, seed=args.seed, verbose=False,
                             log=log)
        return backbone, {"backbone": "mnist_bagnet", "trained_for_patch": args.patch_size, "epochs": args.epochs,
                          "lr": args.lr, "batch_size": args.batch_size}

    run_embedded_training(MNIST_BAGNET_CHECKPOINT, "art_patch_defenses.robust_masking.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, evaluate=global_accuracy)


if __name__ == "__main__":
    main()
