"""Masked fine-tuning for PatchCleanser (the paper's section 4.1 uses Cutout-style training): each training image
gets one or two masks drawn from the mask sets it will be certified with, filled like at inference, so the base
classifier learns to classify one- and two-mask images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from art_patch_defenses.geometry import mask_set
from art_patch_defenses.models.training import train_classifier


def mask_augmentation(image_hw: tuple[int, int], patch_sizes: Sequence[int], masks_per_axis: int,
                      fill: Sequence[float], masks_per_image: int = 2, probability: float = 1.0
                      ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A ``train_classifier`` ``batch_transform``: with ``probability``, ``masks_per_image`` masks from the mask set
    of one of ``patch_sizes`` (drawn per image) set to ``fill`` (pixel values per channel)."""
    if not patch_sizes or masks_per_image < 1 or not 0.0 <= probability <= 1.0:
        raise ValueError("need at least one patch size, masks_per_image >= 1 and probability in [0, 1]")
    sets = [torch.from_numpy(mask_set(image_hw, p, masks_per_axis)) for p in patch_sizes]
    fill_t = torch.tensor(list(fill), dtype=torch.float32).reshape(1, -1, 1, 1)

    def transform(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(batch)
        covered = torch.zeros((n, *image_hw), dtype=torch.bool)
        which = torch.randint(len(sets), (n,), generator=generator)
        for k, masks in enumerate(sets):
            chosen = torch.nonzero(which == k).flatten()
            for _ in range(masks_per_image):
                picks = torch.randint(len(masks), (len(chosen),), generator=generator)
                covered[chosen] |= masks[picks]
        covered &= (torch.rand(n, generator=generator) < probability)[:, None, None]
        return torch.where(covered[:, None], fill_t.to(batch.dtype), batch)

    return transform


def train_patchcleanser(model: nn.Module, x: np.ndarray, y: np.ndarray, mean: tuple[float, ...],
                        std: tuple[float, ...], patch_sizes: Sequence[int] = (2, 5), masks_per_axis: int = 6,
                        probability: float = 0.75, **train_kwargs) -> nn.Module:
    """Fine-tune ``model`` with :func:`mask_augmentation` (fill: the normalisation mean, as at inference);
    other arguments are ``train_classifier``'s."""
    transform = mask_augmentation(tuple(x.shape[2:]), patch_sizes, masks_per_axis, mean, probability=probability)
    return train_classifier(model, x, y, mean, std, batch_transform=transform, **train_kwargs)
