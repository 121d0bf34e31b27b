"""Fine-tune a CIFAR ResNet with FNC after every residual block (clean images, cross-entropy).

Run, e.g.: ``python -m art_patch_defenses.fnc.train --depth 56 --alpha 1.0 --epochs 3``; the checkpoint goes to
``checkpoints/cifar10_resnet<depth>_fnc.pt`` (registry tag ``"fnc"``), with its command and log, and holds the
architecture's weights only: the FNC layers are added at evaluation (``fnc_classifier``), with the alpha chosen
there. It trains on every training image but the 2,000 ``fnc_alpha_tuning.py`` uses (:func:`tuning_split`), so
that choice stays on images the fine-tune never saw; the log gives clean accuracy on the 1,000 evaluation ones before
and after, with FNC at ``--alpha`` and without.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from art_patch_defenses.data import load_dataset
from art_patch_defenses.fnc.clipping import cascaded_modules, insert_fnc
from art_patch_defenses.fnc.training import per_block, stage_alphas, train_with_fnc, tuning_split
from art_patch_defenses.models import build_model
from art_patch_defenses.models.checkpoints import (
    check_run_start,
    finish_training_run,
    non_negative_int,
    open_run_log,
    positive_float,
    positive_int,
)
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD
from art_patch_defenses.models.training import accuracy
from art_patch_defenses.paths import checkpoints_dir


def alpha_argument(text: str) -> list[float]:
    try:
        return stage_alphas(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), default=56)
    parser.add_argument("--init", default="finetuned",
                        help="weights tag or a .pt path to start from (a path continues that checkpoint's record)")
    parser.add_argument("--alpha", type=alpha_argument, default=[1.0], help="one alpha, or a1,a2,a3 per stage")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="a new one when continuing a run (see train_classifier)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    name = f"cifar_resnet{args.depth}"
    out = args.out or checkpoints_dir() / f"cifar10_resnet{args.depth}_fnc.pt"
    # Everything that can fail fails here, before the log (maybe the committed one) is rotated or rewritten.
    check_run_start(parser, out, init=lambda: build_model(name, args.init))
    train = load_dataset("cifar10", "train")
    tuning_patch, tuning_eval = tuning_split(train.y)
    fit = np.setdiff1d(np.arange(len(train.y)), np.concatenate([tuning_patch, tuning_eval]))
    command = "python -m art_patch_defenses.fnc.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log, previous_log = open_run_log(out, command, Path(args.init) if args.init.endswith(".pt") else None)
    torch.manual_seed(args.seed)
    model = build_model(name, args.init)
    alpha = per_block(args.alpha, len(cascaded_modules(model)))
    x_eval, y_eval = train.x[tuning_eval], train.y[tuning_eval]

    def report(network: torch.nn.Module, when: str) -> None:
        plain = accuracy(network, x_eval, y_eval, CIFAR10_MEAN, CIFAR10_STD)
        clipped = accuracy(insert_fnc(network, alpha), x_eval, y_eval, CIFAR10_MEAN, CIFAR10_STD)
        log(f"{when}: {len(y_eval)} held-out training images (fnc_alpha_tuning's): clean {plain:.4f} without FNC, "
            f"{clipped:.4f} with FNC at alpha {args.alpha}")

    start = time.time()
    report(model, "before")
    trained = train_with_fnc(model, train.x[fit], train.y[fit], CIFAR10_MEAN, CIFAR10_STD, alpha, epochs=args.epochs,
                             lr=args.lr, batch_size=args.batch_size, seed=args.seed, log=log)
    weights = build_model(name, None)
    weights.load_state_dict(trained.state_dict())  # the architecture's weights, without the FNC layers
    report(weights, "after")
    settings = {"fnc_alpha_in_training": args.alpha, "excluded": "fnc_alpha_tuning's 2,000 training images"}
    finish_training_run(weights, out, command, log, previous_log, arch=name, init=args.init, settings=settings,
                        epochs=args.epochs, lr=args.lr, train_images=len(fit), seconds=time.time() - start)


if __name__ == "__main__":
    main()
