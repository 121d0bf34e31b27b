"""Fine-tune the pretrained CIFAR ResNets on the JPEG-encoded training set.

The shared CIFAR-10 copy was re-encoded as JPEG, which costs the pretrained models accuracy on ``test/`` (the
figures before and after are recorded with each checkpoint in ``checkpoints/checkpoints.json``); a few epochs on
``train/`` (same encoding) recover it. Run: ``art-patch-defenses finetune --depth 56`` or
``python -m art_patch_defenses.models.finetune --depth 56``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from art_patch_defenses.data import load_dataset
from art_patch_defenses.models.checkpoints import (
    check_output_writable,
    check_run_start,
    file_logger,
    keep_previous_log,
    non_negative_int,
    positive_float,
    positive_int,
    record_checkpoint,
    save_checkpoint,
)
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD, build_model
from art_patch_defenses.models.training import accuracy, train_classifier
from art_patch_defenses.paths import checkpoints_dir


def finetune_cifar_resnet(
    depth: int, epochs: int, lr: float, batch_size: int, out: Path, data_root: str | None = None, seed: int = 0,
    init: str = "pretrained", command: str | None = None,
) -> dict:
    """Fine-tune ``cifar_resnet<depth>`` from ``init`` (a weights tag or path) and save it to ``out``.

    Continuing from an earlier fine-tuned file (``init="finetuned"``) keeps that run's record under
    ``history`` in ``checkpoints.json`` and its log as ``<name>.part<k>.log``. ``out``, the starting weights and
    the data are checked before any log is touched. ``command``: the command line
    recorded with the checkpoint (default: this module's, with ``sys.argv``).
    """
    name = f"cifar_resnet{depth}"
    out = Path(out)
    # Everything that can fail fails here, before the log (maybe the committed one) is rotated or rewritten.
    check_output_writable(out)
    build_model(name, init)  # the starting weights: readable, sha256-checked, matching the model
    train = load_dataset("cifar10", "train", root=data_root)
    test = load_dataset("cifar10", "test", root=data_root)
    log_path = out.with_suffix(".log")
    previous_log = keep_previous_log(log_path) if init != "pretrained" else None
    log = file_logger(log_path)

    if command is None:
        command = " ".join(["python -m art_patch_defenses.models.finetune", *sys.argv[1:]])
    log(f"command: {command}")
    torch.manual_seed(seed)
    model = build_model(name, init)  # built again after seeding, as the recorded runs drew its initialisation
    before = accuracy(model, test.x, test.y, CIFAR10_MEAN, CIFAR10_STD)
    log(f"{name} from {init}: test accuracy {before:.4f} on {len(test)} shared test images")
    start = time.time()
    train_classifier(
        model, train.x, train.y, CIFAR10_MEAN, CIFAR10_STD, epochs=epochs, lr=lr, batch_size=batch_size,
        seed=seed, log=log,
    )
    after = accuracy(model, test.x, test.y, CIFAR10_MEAN, CIFAR10_STD)
    log(f"{name} fine-tuned: test accuracy {after:.4f} on {len(test)} shared test images")
    sha = save_checkpoint(
        model, out, arch=name, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        test_accuracy=after,
    )
    summary = {
        "model": name, "checkpoint": out.name, "sha256": sha, "epochs": epochs, "lr": lr,
        "batch_size": batch_size, "seed": seed, "init": init, "test_accuracy_init": before,
        "test_accuracy_finetuned": after, "test_images": len(test), "train_images": len(train),
        "seconds": round(time.time() - start),
    }
    log(json.dumps(summary))
    record_checkpoint(out.parent / "checkpoints.json", out.name, summary, command,
                      previous_log=previous_log)
    return summary


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse the fine-tuning options (``argv``, default ``sys.argv[1:]``) and run it.

    :param prog: the command name shown in help and errors and recorded with the checkpoint (default
        ``python -m art_patch_defenses.models.finetune``; the ``art-patch-defenses finetune`` command passes its own).
    """
    prog = prog or "python -m art_patch_defenses.models.finetune"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), required=True)
    parser.add_argument("--epochs", type=non_negative_int, default=6,
                        help="0 measures the starting weights' accuracy and saves them unchanged")
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--data-root", default=None, help="ImageFolder root (default ../shared/data/cifar10)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--init", default="pretrained", help="weights to start from: a tag or a path")
    args = parser.parse_args(argv)
    out = args.out or checkpoints_dir() / f"cifar10_resnet{args.depth}_finetuned.pt"
    check_run_start(parser, out)  # the starting weights are checked by finetune_cifar_resnet, before its log
    command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    finetune_cifar_resnet(
        args.depth, args.epochs, args.lr, args.batch_size, out, args.data_root, args.seed, args.init, command=command
    )


if __name__ == "__main__":
    main()
