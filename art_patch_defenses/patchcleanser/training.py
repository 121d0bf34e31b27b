"""Masked fine-tuning for PatchCleanser (the paper's section 4.1 uses Cutout-style training): each training image
gets two masks drawn from the mask sets it will be certified with, filled like at inference, so the base classifier
learns to classify one- and two-mask images. ``worst_of > 1`` keeps, per image, the draw with the highest loss
(a cheap stand-in for the worst-case masks the certificate needs, cf. Saha et al.'s greedy Cutout,
https://arxiv.org/abs/2306.12610)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from art_patch_defenses.geometry import mask_set
from art_patch_defenses.models.training import train_classifier


def _mask_sets(image_hw: tuple[int, int], patch_sizes: Sequence[int], masks_per_axis: int,
               masks_per_image: int) -> list[torch.Tensor]:
    if not patch_sizes or masks_per_image < 1:
        raise ValueError("need at least one patch size and masks_per_image >= 1")
    return [torch.from_numpy(mask_set(image_hw, p, masks_per_axis)) for p in patch_sizes]


def _draw_masks(sets: list[torch.Tensor], n: int, masks_per_image: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, H, W)``: per image, one mask set drawn, then the union of ``masks_per_image`` masks from it."""
    covered = torch.zeros((n, *sets[0].shape[1:]), dtype=torch.bool)
    which = torch.randint(len(sets), (n,), generator=generator)
    for k, masks in enumerate(sets):
        chosen = torch.nonzero(which == k).flatten()
        for _ in range(masks_per_image):
            covered[chosen] |= masks[torch.randint(len(masks), (len(chosen),), generator=generator)]
    return covered


def mask_augmentation(image_hw: tuple[int, int], patch_sizes: Sequence[int], masks_per_axis: int,
                      fill: Sequence[float], masks_per_image: int = 2, probability: float = 1.0
                      ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A ``train_classifier`` ``batch_transform``: with ``probability``, ``masks_per_image`` masks from the mask set
    of one of ``patch_sizes`` (drawn per image) set to ``fill`` (pixel values per channel)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    sets = _mask_sets(image_hw, patch_sizes, masks_per_axis, masks_per_image)
    fill_t = torch.tensor(list(fill), dtype=torch.float32).reshape(1, -1, 1, 1)

    def transform(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        covered = _draw_masks(sets, len(batch), masks_per_image, generator)
        covered &= (torch.rand(len(batch), generator=generator) < probability)[:, None, None]
        return torch.where(covered[:, None], fill_t.to(batch.dtype), batch)

    return transform


def worst_of_masks_loss(image_hw: tuple[int, int], patch_sizes: Sequence[int], masks_per_axis: int,
                        candidates: int, masks_per_image: int = 2, seed: int = 0
                        ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A ``train_classifier`` ``loss_fn``: per image, ``candidates`` draws of ``masks_per_image`` masks are scored
    by the model (eval mode, no gradient) and the one with the highest cross-entropy is trained on. Masked pixels
    are zero in the normalised input, i.e. the normalisation mean, as at inference."""
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    sets = _mask_sets(image_hw, patch_sizes, masks_per_axis, masks_per_image)
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(batch)
        draws = torch.stack([_draw_masks(sets, n, masks_per_image, generator) for _ in range(candidates)])
        model.eval()
        with torch.no_grad():
            losses = torch.stack([F.cross_entropy(model(torch.where(covered[:, None], 0.0, batch)), labels,
                                                  reduction="none") for covered in draws])
        model.train()
        worst = draws[losses.argmax(0), torch.arange(n)]
        logits = model(torch.where(worst[:, None], 0.0, batch))
        return F.cross_entropy(logits, labels), logits

    return loss_fn


def train_patchcleanser(model: nn.Module, x: np.ndarray, y: np.ndarray, mean: tuple[float, ...],
                        std: tuple[float, ...], patch_sizes: Sequence[int] = (2, 5), masks_per_axis: int = 6,
                        probability: float = 0.75, worst_of: int = 1, **train_kwargs) -> nn.Module:
    """Fine-tune ``model`` with :func:`mask_augmentation` (fill: the normalisation mean, as at inference) or, for
    ``worst_of > 1``, :func:`worst_of_masks_loss` (every image masked: needs ``probability`` 1); other arguments
    are ``train_classifier``'s."""
    image_hw = tuple(x.shape[2:])
    if worst_of > 1:
        if probability != 1.0:
            raise ValueError(f"worst_of > 1 masks every image: probability must be 1.0, got {probability}")
        loss_fn = worst_of_masks_loss(image_hw, patch_sizes, masks_per_axis, worst_of,
                                      seed=train_kwargs.get("seed", 0))
        return train_classifier(model, x, y, mean, std, loss_fn=loss_fn, **train_kwargs)
    transform = mask_augmentation(image_hw, patch_sizes, masks_per_axis, mean, probability=probability)
    return train_classifier(model, x, y, mean, std, batch_transform=transform, **train_kwargs)
