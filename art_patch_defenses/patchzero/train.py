"""Train a PatchZero detector for a registered downstream model and save it as a checkpoint.

Run, e.g.: ``python -m art_patch_defenses.patchzero.train --dataset cifar10 --downstream cifar_resnet20``
(the downstream model's fine-tuned weights; the detector goes to ``checkpoints/`` with its log and its
sha256 in ``checkpoints/checkpoints.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from art_patch_defenses.data import load_dataset
from art_patch_defenses.models import build_model, make_classifier, save_checkpoint
from art_patch_defenses.models.checkpoints import (
    check_run_start,
    file_logger,
    keep_previous_log,
    positive_int,
    read_checkpoint,
    record_checkpoint,
)
from art_patch_defenses.patchzero.detector import load_detector
from art_patch_defenses.patchzero.preprocessor import _locate_checkpoint
from art_patch_defenses.patchzero.training import PatchZeroTrainingConfig, train_patchzero
from art_patch_defenses.paths import cache_dir, checkpoints_dir

#: The range of every training setting: (accepts, what it must be).
_CONFIG_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "patch_side_min": (lambda v: v >= 1, "a positive integer"),
    "patch_side_max": (lambda v: v >= 1, "a positive integer"),
    "stage1_images": (lambda v: v >= 0, "a non-negative integer"),
    "stage1_epochs": (lambda v: v >= 0, "a non-negative integer"),
    "stage1_pgd_iter": (lambda v: v >= 1, "a positive integer"),
    "stage1_apgd_iter": (lambda v: v >= 1, "a positive integer"),
    "stage2_steps": (lambda v: v >= 0, "a non-negative integer"),
    "stage2_pgd_iter": (lambda v: v >= 1, "a positive integer"),
    "stage2_step_size": (lambda v: 0 < v < float("inf"), "a positive number"),
    "stage2_step_min": (lambda v: 0 < v < float("inf"), "a positive number"),
    "stage2_random_init": (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    "stage2_joint": (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    "batch_size": (lambda v: v >= 2, "an integer >= 2 (half of each stage-2 batch is attacked)"),
    "learning_rate": (lambda v: 0 < v < float("inf"), "a positive number"),
    "dilation": (lambda v: v >= 0, "a non-negative integer"),
    "seed": (lambda v: v >= 0, "a non-negative integer"),
    "checkpoint_every": (lambda v: v >= 1, "a positive integer"),
}


def check_config(parser: argparse.ArgumentParser, config: PatchZeroTrainingConfig) -> None:
    """Every setting in its range (an argparse error otherwise), before anything is loaded or written."""
    for name, (accepts, what) in _CONFIG_RANGES.items():
        value = getattr(config, name)
        if not accepts(value):
            parser.error(f"argument --{name.replace('_', '-')}: must be {what}, got {value}")
    if config.patch_side_min > config.patch_side_max:
        parser.error(f"--patch-side-min {config.patch_side_min} exceeds --patch-side-max {config.patch_side_max}")
    if config.stage2_step_min > config.stage2_step_size:
        parser.error(f"--stage2-step-min {config.stage2_step_min} exceeds --stage2-step-size {config.stage2_step_size}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "mnist_embedded"))
    parser.add_argument("--downstream", default="cifar_resnet20")
    parser.add_argument("--weights", default="finetuned")
    parser.add_argument("--train-n", type=positive_int, default=10000, help="class-balanced training images")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    defaults = PatchZeroTrainingConfig()
    for field in fields(PatchZeroTrainingConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    args = parser.parse_args(argv)
    config = PatchZeroTrainingConfig(**{f.name: getattr(args, f.name) for f in fields(PatchZeroTrainingConfig)})
    check_config(parser, config)
    out = args.out or checkpoints_dir() / f"{args.dataset}_patchzero_{args.downstream}.pt"

    def check_init_from() -> None:  # the detector stage 2 continues from: readable, sha256-checked, matching
        path, sha256 = _locate_checkpoint(config.init_from, None)
        read_checkpoint(path)
        load_detector(path, sha256)

    # Everything that can fail fails here, before the log (maybe the committed one) is rotated or rewritten.
    check_run_start(parser, out, weights=lambda: build_model(args.downstream, args.weights),
                    **({"init_from": check_init_from} if config.init_from else {}))
    train = load_dataset(args.dataset, "train", n=args.train_n, seed=config.seed)
    classifier = make_classifier(build_model(args.downstream, args.weights), args.downstream)
    previous_log = keep_previous_log(out.with_suffix(".log")) if args.init_from else None
    log = file_logger(out.with_suffix(".log"))

    command = "python -m art_patch_defenses.patchzero.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log(f"command: {command}")
    fill_value = [float(v) for v in train.x.mean(axis=(0, 2, 3))]
    settings = {"encoder_name": "resnet18", "in_channels": int(train.x.shape[1])}
    start = time.time()
    # The work dir (stage-1 data, resumable state) is keyed by everything that shapes them.
    settings_key = {k: v for k, v in vars(args).items() if k != "resume"} | {"out": str(out)}
    key = hashlib.sha1(json.dumps([settings_key, asdict(config)], sort_keys=True,
                                  default=str).encode()).hexdigest()[:10]
    work_dir = cache_dir() / f"patchzero-{args.dataset}-{args.downstream}-{key}"
    detector = train_patchzero(
        classifier, train.x, train.y, fill_value, work_dir, config, settings, resume=args.resume, log=log
    )
    sha = save_checkpoint(
        detector, out, detector=settings, fill_value=fill_value, downstream=f"{args.downstream}:{args.weights}",
        dataset=args.dataset,
    )
    summary = {
        "checkpoint": out.name, "sha256": sha, "dataset": args.dataset, "train_images": len(train),
        "downstream": f"{args.downstream} ({args.weights})", "fill_value": fill_value,
        "training": asdict(config), "init": config.init_from or None, "seconds": round(time.time() - start),
        "size_bytes": out.stat().st_size,
    }
    log(json.dumps(summary))
    record_checkpoint(out.parent / "checkpoints.json", out.name, summary, command, previous_log)


if __name__ == "__main__":
    main()
