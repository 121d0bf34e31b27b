"""Training the MRS base classifier: Gaussian noise inside one random square per image (section 4 of the paper)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from art_patch_defenses.models.training import train_classifier
from art_patch_defenses.mrs.smoothing import masked_noise


def random_square_masks(n: int, image_hw: tuple[int, int], width_min: int, width_max: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, H, W)`` float masks, each one square of a random side in ``[width_min, width_max]`` at a random place."""
    height, width = image_hw
    sides = torch.randint(width_min, width_max + 1, (n,), generator=generator)
    rows = (torch.rand(n, generator=generator) * (height - sides + 1)).long()
    cols = (torch.rand(n, generator=generator) * (width - sides + 1)).long()
    r, c = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
    inside = ((r >= rows[:, None, None]) & (r < (rows + sides)[:, None, None])
              & (c >= cols[:, None, None]) & (c < (cols + sides)[:, None, None]))
    return inside.float()


def masked_noise_augmentation(sigma: float, width_min: int = 5, width_max: int = 10
                              ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A ``train_classifier`` ``batch_transform``: noise ``N(0, sigma^2)`` inside one random square per image."""
    if not 1 <= width_min <= width_max:
        raise ValueError(f"need 1 <= width_min <= width_max, got {width_min}, {width_max}")

    def transform(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        masks = random_square_masks(len(batch), tuple(batch.shape[2:]), width_min, width_max, generator)
        return batch + masked_noise(tuple(batch.shape), masks, sigma, generator).to(batch.device)

    return transform


def train_mrs_base(model: nn.Module, x: np.ndarray, y: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                   sigma: float, width_min: int = 5, width_max: int = 10, **train_kwargs) -> nn.Module:
    """Train (or fine-tune) ``model`` with :func:`masked_noise_augmentation` (other arguments: ``train_classifier``)."""
    return train_classifier(model, x, y, mean, std,
                            batch_transform=masked_noise_augmentation(sigma, width_min, width_max), **train_kwargs)
