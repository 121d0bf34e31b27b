"""Small-receptive-field networks that output local logits ``(N, X, Y, C)``, BagNet style.

Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features models works surprisingly well on ImageNet",
ICLR 2019 (https://arxiv.org/abs/1904.00760): unpadded convolutions keep each output's receptive field small,
and the classifier runs at every location (1x1 convolutions), so one patch corrupts only a window of local
logits. Each network reports its receptive field and stride, computed from its layers by
:func:`art_patch_defenses.geometry.receptive_field`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from art_patch_defenses.geometry import receptive_field

#: (out_channels, kernel, stride) per layer: receptive field 9, stride 2, a 12x12 map on 32x32 inputs.
DEFAULT_LAYERS: tuple[tuple[int, int, int], ...] = ((64, 3, 1), (128, 3, 2), (128, 3, 1), (256, 1, 1), (256, 1, 1))


class LocalLogitsCNN(nn.Module):
    """Unpadded conv-BN-ReLU layers, then a 1x1 classifier at every location.

    ``forward`` returns local logits ``(N, X, Y, C)``; ``forward(x).sum((1, 2))`` are the plain global logits.
    """

    wrap = (False, False)

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 layers: Sequence[tuple[int, int, int]] = DEFAULT_LAYERS) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for out_channels, kernel, stride in layers:
            modules += [nn.Conv2d(channels, out_channels, kernel, stride=stride, padding=0, bias=False),
                        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            channels = out_channels
        self.features = nn.Sequential(*modules)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        field, stride, _ = receptive_field([(k, s, 0) for _, k, s in layers])
        self.receptive_field = (field, field)
        self.stride = (stride, stride)
        self._layers = tuple(layers)

    def feature_map_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The local-logit map ``(X, Y)`` for an input of ``input_hw`` pixels."""
        size = list(input_hw)
        for _, kernel, stride in self._layers:
            size = [(s - kernel) // stride + 1 for s in size]
        if min(size) < 1:
            raise ValueError(f"input {input_hw} is smaller than the receptive field {self.receptive_field}")
        return size[0], size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).permute(0, 2, 3, 1)
