"""Masked-feature training for robust masking (PatchGuard's provable adversarial training).

Local logits are clamped at 0 and, for each training image, the window holding the most true-class evidence
is removed from the true class before the cross-entropy: the network learns to spread its evidence for the
right class so that no single window (no single patch) carries it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from art_patch_defenses.models.training import train_classifier


def masked_feature_loss(windows: torch.Tensor):
    """A ``train_classifier`` loss: cross-entropy on mean clamped evidence minus the true class's top window,
    plus cross-entropy on the mean unclamped local logits.

    The second term keeps every local logit trainable: with the clamp alone, a network whose local logits
    all fall below 0 gets no gradient and stays there (observed on MNIST: stuck at chance).

    :param windows: float cell masks ``(P, X, Y)`` of the window placements for the target patch size.
    """

    def loss_fn(backbone: nn.Module, batch: torch.Tensor, labels: torch.Tensor):
        local = backbone(batch)  # (N, X, Y, C)
        u = local.clamp(min=0)
        cells = u.shape[1] * u.shape[2]
        evidence = u.sum(dim=(1, 2))
        true_windows = torch.einsum("pxy,nxy->np", windows.to(u.dtype), u[torch.arange(len(u)), :, :, labels])
        evidence = evidence - F.one_hot(labels, u.shape[-1]) * true_windows.max(dim=1).values[:, None]
        logits = evidence / cells  # mean evidence keeps the logits in a trainable range
        plain = local.mean(dim=(1, 2))
        return F.cross_entropy(logits, labels) + F.cross_entropy(plain, labels), logits

    return loss_fn


def train_robust_masking(
    backbone: nn.Module, x: np.ndarray, y: np.ndarray, windows: np.ndarray, mean: tuple[float, ...],
    std: tuple[float, ...], **train_kwargs,
) -> nn.Module:
    """Train a local-logit ``backbone`` with :func:`masked_feature_loss` (other arguments: ``train_classifier``)."""
    loss_fn = masked_feature_loss(torch.from_numpy(windows.astype(np.float32)))
    return train_classifier(backbone, x, y, mean, std, loss_fn=loss_fn, **train_kwargs)
