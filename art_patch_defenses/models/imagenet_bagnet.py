"""ImageNet BagNets (BagNet-9 / -17 / -33): ResNet-50-shaped networks whose every output sees a small image patch.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works surprisingly well on ImageNet",
ICLR 2019 (https://arxiv.org/abs/1904.00760). PatchGuard's robust masking (Xiang et al., USENIX Security 2021,
https://arxiv.org/abs/2005.10884) uses BagNet-17 on ImageNet: receptive field 17 px, stride 8, a 26x26 map of
local logits on 224x224 images, so a 32x32 patch (2% of the image) corrupts a 6x6 window of them.

The layout is the reference BagNets': a 1x1 and an unpadded 3x3 stem convolution, four stages of bottleneck
blocks (3, 4, 6, 3 blocks; strides 2, 2, 2, 1; 4x channel expansion) whose first block has a 3x3 convolution in
the first ``len(kernel3)`` stages chosen by the variant and 1x1 everywhere else, no padding anywhere (the shortcut
is cropped to the block's output), and the linear classifier applied at every location. The receptive field and
stride are computed from the layers by :func:`art_patch_defenses.geometry.receptive_field`, never hard-coded.
Module names follow the reference layout (``conv1``, ``conv2``, ``bn1``, ``layer1``-``layer4``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from art_patch_defenses.geometry import receptive_field

#: Which stages start with a 3x3 block, per variant (named by receptive field).
BAGNET_KERNEL3: dict[int, tuple[int, int, int, int]] = {9: (1, 1, 0, 0), 17: (1, 1, 1, 0), 33: (1, 1, 1, 1)}
#: Blocks and strides of the four stages (ResNet-50's).
BAGNET_BLOCKS = (3, 4, 6, 3)
BAGNET_STRIDES = (2, 2, 2, 1)


class BagNetBottleneck(nn.Module):
    """A ResNet bottleneck without padding: 1x1, ``kernel`` x ``kernel`` (stride ``stride``), 1x1 (4x wider).

    The shortcut (a strided 1x1 convolution where the shape changes) is cropped to the block's output, keeping
    its top-left part, so every output still sees only the pixels of its main path's receptive field.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, kernel: int = 1) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(width))
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = shortcut[..., : out.shape[-2], : out.shape[-1]]
        return self.relu(out + shortcut)


class ImageNetBagNet(nn.Module):
    """A BagNet returning local logits ``(N, X, Y, C)``; ``forward(x).mean((1, 2))`` are the usual BagNet logits.

    :param variant: the receptive field, one of :data:`BAGNET_KERNEL3` (9, 17 or 33).
    :param num_classes: classes (1000 on ImageNet).
    :param width: channels of the first stage (64 in the paper; smaller values give a narrower, cheaper net with
        the same geometry).
    Attributes ``receptive_field``, ``stride`` and ``wrap`` (pairs) and :meth:`feature_map_size` are what robust
    masking reads to size its windows.
    """

    wrap = (False, False)

    def __init__(self, variant: int = 17, num_classes: int = 1000, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if variant not in BAGNET_KERNEL3:
            raise ValueError(f"variant must be one of {sorted(BAGNET_KERNEL3)} (the receptive field), got {variant!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.variant = variant
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers: list[tuple[int, int, int]] = [(1, 1, 0), (3, 1, 0)]  # (kernel, stride, padding) of the main path
        inplanes = width
        for index, (blocks, stride, kernel3) in enumerate(
                zip(BAGNET_BLOCKS, BAGNET_STRIDES, BAGNET_KERNEL3[variant], strict=True)):
            planes = width * 2**index
            stage = []
            for block in range(blocks):
                kernel = 3 if block < kernel3 else 1
                block_stride = stride if block == 0 else 1
                stage.append(BagNetBottleneck(inplanes, planes, block_stride, kernel))
                layers.append((kernel, block_stride, 0))
                inplanes = planes * BagNetBottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(inplanes, num_classes)
        self._layers = tuple(layers)
        field, step, _ = receptive_field(list(layers))
        self.receptive_field = (field, field)
        self.stride = (step, step)

    def feature_map_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The local-logit map ``(X, Y)`` for an input of ``input_hw`` pixels."""
        size = list(input_hw)
        for kernel, stride, _ in self._layers:
            size = [(s - kernel) // stride + 1 for s in size]
        if min(size) < 1:
            raise ValueError(f"input {tuple(input_hw)} is smaller than the receptive field {self.receptive_field}")
        return size[0], size[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map ``(N, 4 * 8 * width, X, Y)``."""
        x = self.relu(self.bn1(self.conv2(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).permute(0, 2, 3, 1))


def imagenet_bagnet(variant: int = 17, num_classes: int = 1000, width: int = 64) -> ImageNetBagNet:
    """An untrained ImageNet BagNet-``variant`` (receptive field ``variant`` px, stride 8)."""
    return ImageNetBagNet(variant, num_classes, width)


def bagnet_layers(model: ImageNetBagNet) -> Sequence[tuple[int, int, int]]:
    """The ``(kernel, stride, padding)`` chain of a BagNet's main path (what its receptive field is computed from)."""
    return model._layers
