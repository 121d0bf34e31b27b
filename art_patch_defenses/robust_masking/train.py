"""Train a robust-masking backbone on CIFAR-10 and save it as a checkpoint.

- ``--backbone ds``: Mask-DS. A CIFAR ResNet whose stem takes the ``(x, 1 - x)`` encoding, trained on images
  ablated to one random column band each (Levine & Feizi's training); warm-started from the fine-tuned
  ResNet (the ``x`` half of the stem copies its weights, the ``1 - x`` half starts at zero).
- ``--backbone ds_crop``: the same bands and training on cropped bands (:class:`~art_patch_defenses.models.bagnet
  .CroppedColumnBandNet`: the ResNet sees each band's 4 columns and its position, not a mostly-zero image; a
  training step costs about an eleventh), warm-started the same way (the position channel starts at zero).
- ``--backbone bagnet``: the BagNet-style :class:`LocalLogitsCNN`, trained with masked-feature training.

``--distill-from model:weights`` adds knowledge distillation from that classifier's logits on the un-augmented
training images (``--distill-weight``, ``--temperature``; :func:`~art_patch_defenses.models.training
.train_classifier`). ``--holdout n`` trains on the other training images and logs, before and after training, robust
masking's clean and certified (5x5) accuracy and the local (band) accuracy on the ``n`` left out (class-balanced,
seed 0), so a recipe is chosen without the test images.

Run, e.g.: ``python -m art_patch_defenses.robust_masking.train --backbone ds --epochs 4``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from art_patch_defenses.data import load_dataset
from art_patch_defenses.geometry import feature_window, window_masks
from art_patch_defenses.models import build_model, save_checkpoint
from art_patch_defenses.models.bagnet import ColumnBandNet, LocalLogitsCNN, cropped_mask_ds
from art_patch_defenses.models.checkpoints import (
    check_run_start,
    non_negative_int,
    open_run_log,
    positive_float,
    positive_int,
    probability,
    read_checkpoint,
    record_checkpoint,
)
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD, make_classifier
from art_patch_defenses.models.train_embedded import holdout_split
from art_patch_defenses.models.training import train_classifier
from art_patch_defenses.paths import checkpoints_dir
from art_patch_defenses.robust_masking.backbones import ds_base_from, load_backbone
from art_patch_defenses.robust_masking.estimator import PyTorchRobustMasking
from art_patch_defenses.robust_masking.training import train_robust_masking

#: The (x, 1 - x) encoding is built from raw [0, 1] pixels, so DS bases take them unnormalised.
IDENTITY_NORMALISATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


DS_KINDS = ("ds", "ds_crop")
#: The registered model each backbone kind is evaluated as (its input shape and normalisation).
REGISTERED = {"ds": "cifar_mask_ds", "ds_crop": "cifar_mask_ds_crop", "bagnet": "cifar_bagnet"}


def warm_start(kind: str, resnet: nn.Module, band_width: int) -> ColumnBandNet:
    """Mask-DS of ``kind`` around a copy of a trained CIFAR ResNet (its stem extended to the band encoding)."""
    if kind == "ds_crop":
        return cropped_mask_ds(resnet, CIFAR10_MEAN, CIFAR10_STD, band_width)
    return ColumnBandNet(ds_base_from(resnet), band_width)


def random_band_loss(bands: ColumnBandNet):
    """``train_classifier`` loss: each image ablated to one random band, cross-entropy of the base's logits."""

    def loss_fn(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor):
        choice = torch.randint(0, bands.keep.shape[0], (len(batch),))
        encoded = torch.cat([batch, 1 - batch], dim=1) * bands.keep[choice][:, None, None, :]
        logits = bands.base(encoded)
        return F.cross_entropy(logits, labels), logits

    return loss_fn


def report_holdout(backbone: nn.Module, kind: str, x: np.ndarray, y: np.ndarray, log, when: str) -> None:
    """Log robust masking's clean and certified accuracy (5x5 patch; DS: one vote per band) and the share of local
    predictions that are right, on held-out training images."""
    if not len(x):
        return
    feature_type = "prediction" if kind in DS_KINDS else "logits"
    estimator = make_classifier(backbone.eval(), REGISTERED[kind], estimator_class=PyTorchRobustMasking,
                                patch_size=5, feature_type=feature_type)
    found = estimator.certify(x, y)
    local_right = estimator.local_features(x).argmax(-1) == y[:, None, None]
    log(f"holdout {when}: {len(x)} training images, 5x5 patch, {feature_type}: clean "
        f"{np.mean(found.prediction == y):.4f} certified {np.mean(found.certified):.4f} local "
        f"{local_right.mean():.4f}")


def teacher_logits_on(spec: str, x: np.ndarray) -> np.ndarray:
    """Logits of the registered classifier ``model:weights`` on ``x`` (un-augmented, eval mode)."""
    name, _, weights = spec.partition(":")
    return make_classifier(build_model(name, weights), name).predict(x, batch_size=500)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=("ds", "ds_crop", "bagnet"), default="ds")
    parser.add_argument("--band-width", type=positive_int, default=4)
    parser.add_argument("--patch-size", type=positive_int, default=5, help="patch side the bagnet training targets")
    parser.add_argument("--init", default="cifar_resnet20:finetuned",
                        help="warm start: model:weights (DS from a CIFAR ResNet) or a backbone checkpoint (.pt) "
                        "to continue training")
    parser.add_argument("--distill-from", default=None,
                        help="teacher model:weights (e.g. cifar_resnet56:finetuned) for knowledge distillation")
    parser.add_argument("--distill-weight", type=probability, default=0.5,
                        help="share of the loss that is distillation (with --distill-from)")
    parser.add_argument("--temperature", type=positive_float, default=4.0, help="distillation temperature")
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training images and report on those")
    parser.add_argument("--epochs", type=positive_int, default=4)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.distill_from is not None and args.distill_weight == 0:
        parser.error("--distill-weight 0 with --distill-from distils nothing: give a weight in (0, 1]")
    out = args.out or checkpoints_dir() / f"cifar10_robust_masking_{args.backbone}.pt"
    continued = args.init.endswith(".pt")
    init = (Path(args.init) if Path(args.init).is_file() else checkpoints_dir() / args.init) if continued else None

    def check_init() -> None:
        if continued:
            content = read_checkpoint(init)
            kind = content.get("backbone") if isinstance(content, Mapping) else None
            if kind != args.backbone:
                raise ValueError(f"{init} holds a {kind!r} backbone, not the --backbone {args.backbone!r} to train")
            load_backbone(init)
        elif args.backbone in DS_KINDS:
            model_name, _, weights = args.init.partition(":")
            if not weights:
                raise ValueError(f"expected model:weights (e.g. cifar_resnet20:finetuned) or a .pt file, "
                                 f"got {args.init!r}")
            warm_start(args.backbone, build_model(model_name, weights), args.band_width)
        if args.distill_from is not None:
            teacher, _, weights = args.distill_from.partition(":")
            if not weights:
                raise ValueError(f"--distill-from: expected model:weights (e.g. cifar_resnet56:finetuned), got "
                                 f"{args.distill_from!r}")
            build_model(teacher, weights)

    # Everything that can fail fails here, before the log (maybe the committed one) is rotated or rewritten.
    check_run_start(parser, out, init=check_init)
    if continued:  # read the starting weights before ``out`` (possibly the same file) is rewritten
        backbone = load_backbone(init)
        base = read_checkpoint(init).get("base")
    train = load_dataset("cifar10", "train")
    try:
        fit, held_out = holdout_split(train, args.holdout)
    except ValueError as error:
        parser.error(str(error))
    x_fit, y_fit = train.x[fit], train.y[fit]
    command = "python -m art_patch_defenses.robust_masking.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log, previous_log = open_run_log(out, command, init)
    torch.manual_seed(args.seed)
    start = time.time()
    recipe = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "log": log}
    recorded = {}  # distillation and holdout are recorded only where used: older records keep their settings
    if args.distill_from is not None:
        recipe.update(teacher_logits=teacher_logits_on(args.distill_from, x_fit),
                      distill_weight=args.distill_weight, temperature=args.temperature)
        recorded = {"distill_from": args.distill_from, "distill_weight": args.distill_weight,
                    "temperature": args.temperature}
    if args.holdout:
        recorded["holdout"] = args.holdout
    if args.backbone in DS_KINDS:
        if not continued:
            base, _, weights = args.init.partition(":")
            backbone = warm_start(args.backbone, build_model(base, weights), args.band_width)
        report_holdout(backbone, args.backbone, train.x[held_out], train.y[held_out], log, "before")
        train_classifier(backbone, x_fit, y_fit, *IDENTITY_NORMALISATION, loss_fn=random_band_loss(backbone),
                         **recipe)
        settings = {"backbone": args.backbone, "band_width": backbone.band_width, "base": base}
    else:
        backbone = backbone if continued else LocalLogitsCNN(num_classes=10)
        report_holdout(backbone, args.backbone, train.x[held_out], train.y[held_out], log, "before")
        window = feature_window(args.patch_size, backbone.receptive_field[0], backbone.stride[0])
        windows = window_masks(backbone.feature_map_size((32, 32)), (window, window))
        train_robust_masking(backbone, x_fit, y_fit, windows, CIFAR10_MEAN, CIFAR10_STD, **recipe)
        settings = {"backbone": "bagnet", "trained_for_patch": args.patch_size}
    report_holdout(backbone, args.backbone, train.x[held_out], train.y[held_out], log, "after")
    sha = save_checkpoint(backbone, out, **settings)
    init_used = args.init if continued or args.backbone in DS_KINDS else None  # a fresh BagNet starts from scratch
    summary = {"checkpoint": out.name, "sha256": sha, **settings, **recorded, "init": init_used,
               "epochs": args.epochs, "lr": args.lr, "train_images": len(fit), "seconds": round(time.time() - start),
               "size_bytes": out.stat().st_size}
    log(json.dumps(summary))
    record_checkpoint(out.parent / "checkpoints.json", out.name, summary, command, previous_log)


if __name__ == "__main__":
    main()
