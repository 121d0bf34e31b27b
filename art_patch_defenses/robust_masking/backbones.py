"""Robust-masking backbones: building them by kind and loading the checkpoints ``robust_masking.train`` saves.

The networks themselves live in :mod:`art_patch_defenses.models.bagnet` (Mask-DS is shared with ART's
de-randomized-smoothing baseline, so ``models/`` builds it too).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from art_patch_defenses.models import bagnet
from art_patch_defenses.models.bagnet import LocalLogitsCNN
from art_patch_defenses.models.checkpoints import load_weights
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD, cifar_mask_ds, cifar_mask_ds_crop

#: Backbone kinds: CIFAR-10 Mask-DS (ResNet-20 base, 4-column bands) on ablated images or on cropped bands,
#: CIFAR-10 and MNIST BagNet-style CNNs.
BACKBONE_KINDS = ("ds", "ds_crop", "bagnet", "mnist_bagnet")


def ds_base_from(resnet: nn.Module) -> nn.Module:
    """:func:`art_patch_defenses.models.bagnet.ds_base_from` for a CIFAR ResNet (its normalisation)."""
    return bagnet.ds_base_from(resnet, CIFAR10_MEAN, CIFAR10_STD)


def build_backbone(kind: str, band_width: int = 4, depth: int = 20) -> nn.Module:
    """An untrained robust-masking backbone of ``kind`` (one of :data:`BACKBONE_KINDS`)."""
    if kind == "ds":
        return cifar_mask_ds(depth, band_width)
    if kind == "ds_crop":
        return cifar_mask_ds_crop(depth, band_width)
    if kind == "bagnet":
        return LocalLogitsCNN(num_classes=10)
    if kind == "mnist_bagnet":
        return LocalLogitsCNN(num_classes=10, in_channels=1)
    raise ValueError(f"unknown robust-masking backbone {kind!r}; known: {', '.join(BACKBONE_KINDS)}")


def load_backbone(path: str | Path, sha256: str | None = None) -> nn.Module:
    """Rebuild a backbone saved by ``robust_masking.train`` from the settings stored in it, then load it."""
    settings = torch.load(path, map_location="cpu", weights_only=True)
    kind = settings.get("backbone")
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"checkpoint {path} names no robust-masking backbone ({', '.join(BACKBONE_KINDS)}), "
                         f"got {kind!r}")
    depth = int(str(settings.get("base", "cifar_resnet20")).removeprefix("cifar_resnet"))
    backbone = build_backbone(kind, int(settings.get("band_width", 4)), depth)
    return load_weights(backbone, path, sha256).eval()
