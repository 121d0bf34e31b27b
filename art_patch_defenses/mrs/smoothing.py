"""Masked Gaussian smoothing (MRS, Theorem 1 and Algorithm 1): noise inside a mask, confidence bound, radius.

Units: images and radii are in [0, 1] pixel units here; the paper states sigma and R in 0-255 units (its
"R = 25" is ``25 / 255`` here): :func:`from_255` converts.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

#: Pixel values in the paper are 0-255.
PAPER_PIXEL_SCALE = 255.0


def from_255(value: float) -> float:
    """A sigma or radius in the paper's 0-255 pixel units, in this package's [0, 1] units."""
    return value / PAPER_PIXEL_SCALE


def masked_noise(shape: tuple[int, ...], mask: torch.Tensor, sigma: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise ``N(0, sigma^2 M)``: ``sigma`` times a standard normal inside ``mask``, exactly 0 outside.

    :param shape: ``(N, C, H, W)`` of the batch to perturb.
    :param mask: ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` 0/1 tensor (broadcast over channels).
    """
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise * sigma * mask.to(noise.dtype)


def lower_confidence_bound(count: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion at level ``1 - alpha``."""
    if count <= 0:
        return 0.0
    return float(beta.ppf(alpha, count, n - count + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """Theorem 1 with ``p_B = 1 - p_A``: ``R = sigma * Phi^-1(p_A_lower)``; 0 unless ``p_A_lower > 1/2``."""
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


def top_two_test(counts: np.ndarray, alpha: float) -> int:
    """ART's (Cohen et al.'s) PREDICT rule: the top class if a two-sided binomial test between the two largest
    counts rejects a tie at level ``alpha``, else -1 (abstain)."""
    top, second = np.argsort(counts)[::-1][:2]
    n_top, n_second = int(counts[top]), int(counts[second])
    if n_top + n_second == 0 or binomtest(n_top, n_top + n_second, 0.5).pvalue > alpha:
        return -1
    return int(top)
