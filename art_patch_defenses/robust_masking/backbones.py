"""Robust-masking backbones: building them, warm-starting Mask-DS from a CIFAR ResNet, loading checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from art_patch_defenses.models import cifar_resnet
from art_patch_defenses.models.bagnet import ColumnBandNet, LocalLogitsCNN
from art_patch_defenses.models.checkpoints import load_weights
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD


def ds_base_from(resnet: nn.Module) -> nn.Module:
    """A copy of a CIFAR ResNet whose stem takes ``2 * 3`` channels; the ``x`` half keeps the ResNet's weights
    (rescaled from its normalisation) and the ``1 - x`` half starts at zero."""
    base = copy.deepcopy(resnet)
    old = base.conv1
    new = nn.Conv2d(6, old.out_channels, old.kernel_size, old.stride, old.padding, bias=True)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :3] = old.weight / std  # conv((x - mean) / std) = conv'(x) + bias
        new.bias.copy_(-(old.weight * mean / std).sum(dim=(1, 2, 3)))
    base.conv1 = new
    return base


def load_backbone(path: str | Path, sha256: str | None = None) -> nn.Module:
    """Rebuild a backbone saved by ``robust_masking.train`` from the settings stored in it, then load it."""
    settings = torch.load(path, map_location="cpu", weights_only=True)
    kind = settings.get("backbone")
    if kind == "ds":
        depth = int(str(settings.get("base", "cifar_resnet20")).removeprefix("cifar_resnet"))
        backbone: nn.Module = ColumnBandNet(ds_base_from(cifar_resnet(depth)), int(settings["band_width"]))
    elif kind == "bagnet":
        backbone = LocalLogitsCNN(num_classes=10)
    else:
        raise ValueError(f"checkpoint {path} names no robust-masking backbone ('ds' or 'bagnet'), got {kind!r}")
    return load_weights(backbone, path, sha256).eval()
