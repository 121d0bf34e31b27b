"""Test-time averaging over the horizontal mirror: a classifier that scores an image and its mirror image and
averages the two log-softmax outputs.

A certifier that works with any base classifier (PatchCleanser) can certify this one as it certifies the model
inside: the one- and two-mask images are masked first, then each is classified together with its mirror. On the
PatchCleanser ResNet-56 it raised the certified share of held-out training images (docs/patchcleanser.md).
"""

from __future__ import annotations

import torch
from torch import nn


def average_log_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """The mean of the log-softmax of several ``(N, classes)`` logits (a view ensemble's score)."""
    return sum(scores.log_softmax(1) for scores in logits) / len(logits)


class FlipAverage(nn.Module):
    """``(log_softmax(model(x)) + log_softmax(model(mirror(x)))) / 2`` for NCHW images ``x``, mirrored along the
    width (the last axis). The output is invariant to mirroring the input, and costs two forward passes.

    :param model: an NCHW image classifier returning ``(N, classes)`` logits (a model with another output, such
        as local logits, is refused when called: mirroring would move its local features).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"FlipAverage takes NCHW images, got a tensor of shape {tuple(x.shape)}")
        scores = []
        for image in (x, x.flip(3)):
            logits = self.model(image)
            if logits.dim() != 2:
                raise ValueError(f"FlipAverage needs (N, classes) logits from its model, got shape "
                                 f"{tuple(logits.shape)}")
            scores.append(logits)
        return average_log_probabilities(scores)
