"""Train the plain MNIST CNN of the embedded MNIST default once, and commit it (registry tag ``"embedded"``).

Run: ``python -m art_patch_defenses.models.train_embedded``; the checkpoint goes to
``checkpoints/mnist_embedded_mnist_cnn.pt`` with its log and its record in ``checkpoints/checkpoints.json``.
:func:`run_embedded_training` is the shared part of every ``train_embedded`` command (the defences' own MNIST
models are trained by ``python -m art_patch_defenses.<defence>.train_embedded``): one seeded run on the 4,000
embedded training digits, saved, logged and recorded as the CIFAR-10 checkpoints are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from art_patch_defenses.data import ImageDataset, load_dataset
from art_patch_defenses.data.datasets import balanced_subset
from art_patch_defenses.models.checkpoints import (
    check_output_writable,
    check_run_start,
    non_negative_int,
    open_run_log,
    positive_float,
    positive_int,
    read_state_dict,
    record_checkpoint,
    save_checkpoint,
    sha256_of,
)
from art_patch_defenses.models.mnist_cnn import MnistCNN
from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD, embedded_checkpoint, weights_path
from art_patch_defenses.models.training import accuracy, train_classifier

Log = Callable[[str], None]
#: ``train_fn(train, log) -> (model, settings)``; ``settings`` (plain values) go into the checkpoint and its record.
TrainFn = Callable[[ImageDataset, Log], tuple[nn.Module, dict[str, Any]]]

#: The recipe of the plain MNIST CNN (formerly trained on first use): seconds on one CPU thread.
MNIST_CNN_EPOCHS = 5
MNIST_CNN_LR = 0.05


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every ``train_embedded`` command shares: ``--seed``, ``--threads``, ``--out``."""
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seeds the initialisation, order and augmentation")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (1: the committed runs; other counts may round differently)")
    parser.add_argument("--out", type=Path, default=None, help="default: checkpoints/mnist_embedded_<name>.pt")


def check_embedded_out(parser: argparse.ArgumentParser, name: str, out: Path | None,
                       **checks: Callable[[], object]) -> None:
    """A ``train_embedded`` command's ``--out`` (default ``checkpoints/mnist_embedded_<name>.pt``) must be writable
    and its ``checks`` (e.g. ``init=``) pass: checked with the arguments, so a failure is an argparse error before
    anything is written (see :func:`check_run_start`)."""
    check_run_start(parser, out if out is not None else embedded_checkpoint(name), **checks)


def run_embedded_training(name: str, module: str, argv: Sequence[str], train_fn: TrainFn, *, seed: int,
                          threads: int = 1, out: Path | None = None, init: tuple[str, str] | None = None,
                          evaluate: Callable[[nn.Module, ImageDataset], float] | None = None) -> dict[str, Any]:
    """Seed, train on the embedded MNIST training digits, then save ``out``, its log and its record.

    ``out``, the starting weights and the data are checked before the log is opened.

    :param name: the model's file name part: ``checkpoints/mnist_embedded_<name>.pt`` unless ``out`` is given.
    :param module: the command's module, for the recorded command line ``python -m <module> <argv>``.
    :param train_fn: trains and returns ``(model, settings)``; it is called after ``torch.manual_seed(seed)``.
    :param init: ``(model name, weights tag)`` the run starts from, recorded with the file's sha256.
    :param evaluate: ``evaluate(model, test)``: accuracy on the embedded test digits, recorded.
    :return: the record written to ``checkpoints.json``.
    """
    torch.set_num_threads(threads)
    out = Path(out) if out is not None else embedded_checkpoint(name)
    command = " ".join(["python -m", module, *argv])
    # Everything that can fail fails here, before the log (maybe the committed one) is rewritten.
    check_output_writable(out)
    summary: dict[str, Any] = {"checkpoint": out.name, "dataset": "mnist_embedded", "init": None}
    if init is not None:
        init_path = weights_path(*init)
        read_state_dict(init_path)  # readable and matching its recorded sha256
        summary.update(init=":".join(init), init_sha256=sha256_of(init_path))
    train = load_dataset("mnist_embedded", "train")
    log, _ = open_run_log(out, command)
    if init is not None:
        log(f"starts from {':'.join(init)} = {init_path.name} (sha256 {summary['init_sha256']})")
    torch.manual_seed(seed)
    start = time.time()
    model, settings = train_fn(train, log)
    seconds = round(time.time() - start)
    sha = save_checkpoint(model, out, **settings)
    summary.update(sha256=sha, **settings, seed=seed, torch_threads=threads, train_images=len(train),
                   seconds=seconds, size_bytes=out.stat().st_size)
    if evaluate is not None:
        test = load_dataset("mnist_embedded", "test")
        summary.update(test_accuracy=round(evaluate(model, test), 4), test_images=len(test))
    log(json.dumps(summary))
    record_checkpoint(out.parent / "checkpoints.json", out.name, summary, command)
    return summary


def holdout_split(train: ImageDataset, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, held_out)`` of the training images: ``holdout`` class-balanced images (seed 0) left out.
    A holdout that leaves no image to train on is a ``ValueError`` naming ``--holdout``."""
    if not 0 <= holdout < len(train.y):
        raise ValueError(f"--holdout must leave training images: got {holdout} of the {len(train.y)} there are")
    held_out = balanced_subset(train.y, holdout, seed=0) if holdout else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(train.y)), held_out), held_out


def plain_accuracy(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[[nn.Module, ImageDataset], float]:
    """An ``evaluate`` for :func:`run_embedded_training`: top-1 accuracy of a classifier with logits ``(N, C)``."""
    return lambda model, test: accuracy(model, test.x, test.y, mean, std)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=MNIST_CNN_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=MNIST_CNN_LR)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    check_embedded_out(parser, "mnist_cnn", args.out)

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        model = train_classifier(MnistCNN(), train.x, train.y, MNIST_MEAN, MNIST_STD, epochs=args.epochs, lr=args.lr,
                                 batch_size=args.batch_size, flip=False, seed=args.seed, verbose=False, log=log)
        return model, {"arch": "mnist_cnn", "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}

    run_embedded_training("mnist_cnn", "art_patch_defenses.models.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, evaluate=plain_accuracy(MNIST_MEAN, MNIST_STD))


if __name__ == "__main__":
    main()
