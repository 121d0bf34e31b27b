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
from dataclasses import asdict, fields
from pathlib import Path

from art_patch_defenses.data import load_dataset
from art_patch_defenses.models import build_model, make_classifier, save_checkpoint
from art_patch_defenses.models.checkpoints import file_logger, keep_previous_log, record_checkpoint
from art_patch_defenses.patchzero.training import PatchZeroTrainingConfig, train_patchzero
from art_patch_defenses.paths import cache_dir, checkpoints_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "mnist_embedded"))
    parser.add_argument("--downstream", default="cifar_resnet20")
    parser.add_argument("--weights", default="finetuned")
    parser.add_argument("--train-n", type=int, default=10000, help="class-balanced training images")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    defaults = PatchZeroTrainingConfig()
    for field in fields(PatchZeroTrainingConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    args = parser.parse_args(argv)
    config = PatchZeroTrainingConfig(**{f.name: getattr(args, f.name) for f in fields(PatchZeroTrainingConfig)})
    out = args.out or checkpoints_dir() / f"{args.dataset}_patchzero_{args.downstream}.pt"
    previous_log = keep_previous_log(out.with_suffix(".log")) if args.init_from else None
    log = file_logger(out.with_suffix(".log"))

    command = "python -m art_patch_defenses.patchzero.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log(f"command: {command}")
    train = load_dataset(args.dataset, "train", n=args.train_n, seed=config.seed)
    fill_value = [float(v) for v in train.x.mean(axis=(0, 2, 3))]
    classifier = make_classifier(build_model(args.downstream, args.weights), args.downstream)
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
