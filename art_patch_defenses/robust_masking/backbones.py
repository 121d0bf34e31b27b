"""Robust-masking backbones: building them, warm-starting Mask-DS from a CIFAR ResNet, loading checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from art_patch_defenses.models.bagnet import ColumnBandNet, LocalLogitsCNN
from art_patch_defenses.models.checkpoints import load_weights
from art_patch_defenses.models.cifar_resnet import cifar_resnet
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


#: Backbone kinds: CIFAR-10 Mask-DS (ResNet-20 base, 4-column bands), CIFAR-10 and MNIST BagNet-style CNNs.
BACKBONE_KINDS = ("ds", "bagnet", "mnist_bagnet")
MNIST_BAGNET_EPOCHS = 3
#: The patch side the embedded MNIST BagNet is trained against: 5% of a 32x32 digit, as the default scenario.
MNIST_BAGNET_PATCH = 7


def build_backbone(kind: str, band_width: int = 4, depth: int = 20) -> nn.Module:
    """An untrained robust-masking backbone of ``kind`` (one of :data:`BACKBONE_KINDS`)."""
    if kind == "ds":
        return ColumnBandNet(ds_base_from(cifar_resnet(depth)), band_width)
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


def embedded_mnist_bagnet() -> Path:
    """Train the MNIST BagNet with masked-feature training (7x7 patches) on the embedded 4,000 training digits
    on first use and cache it (a minute on a CPU); the default scenario's robust-masking backbone."""
    from art_patch_defenses.data import load_dataset
    from art_patch_defenses.geometry import feature_window, window_masks
    from art_patch_defenses.models.checkpoints import save_checkpoint
    from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD
    from art_patch_defenses.paths import cache_dir
    from art_patch_defenses.robust_masking.training import train_robust_masking

    path = cache_dir() / f"mnist_bagnet_embedded_p{MNIST_BAGNET_PATCH}_e{MNIST_BAGNET_EPOCHS}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        backbone = build_backbone("mnist_bagnet")
        train = load_dataset("mnist_embedded", "train")
        window = feature_window(MNIST_BAGNET_PATCH, backbone.receptive_field[0], backbone.stride[0])
        windows = window_masks(backbone.feature_map_size((32, 32)), (window, window))
        train_robust_masking(backbone, train.x, train.y, windows, MNIST_MEAN, MNIST_STD,
                             epochs=MNIST_BAGNET_EPOCHS, lr=0.05, batch_size=64, flip=False, verbose=False)
        save_checkpoint(backbone, path, backbone="mnist_bagnet", trained_for_patch=MNIST_BAGNET_PATCH)
    return path
