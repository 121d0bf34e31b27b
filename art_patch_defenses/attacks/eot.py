"""Masked PGD with expectation over transformation (EOT) for classifiers smoothed with noise inside a mask.

The smoothed classifier (MRS) has no useful gradient of its own; its expected base loss does. Each step averages
the base classifier's ART ``loss_gradient`` over ``eot_samples`` noisy copies (Gaussian, ``sigma``, inside
``noise_mask``), steps in L-inf (sign) or L2 (normalised) geometry, and projects back onto the budget inside the
patch ``mask`` and into [0, 1]. Restarts keep, per image, the iterate whose noisy copies the base classifier
gets right least often.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from art_patch_defenses.mrs.smoothing import masked_noise
from art_patch_defenses.validation import check_estimator_inputs, check_labels


def _noisy(x: np.ndarray, noise_mask: np.ndarray, sigma: float, generator: torch.Generator) -> np.ndarray:
    noise = masked_noise(x.shape, torch.from_numpy(noise_mask.astype(np.float32)), sigma, generator).numpy()
    return (x + noise).astype(np.float32)


def _project(delta: np.ndarray, norm: float, eps: float) -> np.ndarray:
    if norm == np.inf:
        return np.clip(delta, -eps, eps)
    norms = np.sqrt((delta.reshape(len(delta), -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)
    return delta * np.minimum(1.0, eps / np.maximum(norms, 1e-12))


def masked_pgd_eot(
    estimator,
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    sigma: float | None = None,
    noise_mask: np.ndarray | None = None,
    norm: float | str = np.inf,
    eps: float = 1.0,
    eps_step: float = 0.05,
    max_iter: int = 20,
    eot_samples: int = 8,
    restarts: int = 1,
    seed: int = 0,
    verbose: bool = False,
) -> np.ndarray:
    """Untargeted masked PGD with EOT over masked Gaussian noise.

    :param estimator: an ART classifier whose ``loss_gradient`` is the base classifier's (e.g. ``PyTorchMRS``).
    :param mask: ``(N, H, W)`` patch masks (or ``x``-shaped ones): the only pixels the attack changes.
    :param sigma: the smoothing noise std (default: the estimator's ``sigma``).
    :param noise_mask: ``(N, H, W)`` smoothing regions (default: ``mask``).
    :param norm: ``np.inf`` (or ``"inf"``) or ``2``; ``eps`` and ``eps_step`` in [0, 1] pixel units.
    :return: adversarial images, equal to ``x`` outside ``mask``.
    """
    x = check_estimator_inputs(estimator, x)
    y = check_labels(y, len(x), estimator.nb_classes)
    norm = np.inf if norm in ("inf", np.inf) else norm
    if norm not in (np.inf, 2):
        raise ValueError(f"norm must be np.inf or 2, got {norm}")
    sigma = estimator.sigma if sigma is None else sigma
    mask = np.asarray(mask, dtype=bool)
    mask = mask.any(axis=1) if mask.ndim == 4 else mask
    if mask.shape != (len(x), *x.shape[2:]):
        raise ValueError(f"mask must be (N, H, W) = {(len(x), *x.shape[2:])}, got {mask.shape}")
    noise_mask = mask if noise_mask is None else np.asarray(noise_mask, dtype=bool)
    pixels = mask[:, None].astype(np.float32)
    one_hot = np.eye(estimator.nb_classes, dtype=np.float32)[y]
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def right_fraction(images: np.ndarray) -> np.ndarray:
        right = np.zeros(len(images))
        for _ in range(eot_samples):
            right += estimator.predict_base(_noisy(images, noise_mask, sigma, generator)).argmax(1) == y
        return right / eot_samples

    best, best_score = x.copy(), np.full(len(x), np.inf)
    for restart in tqdm(range(restarts), desc="masked PGD + EOT restarts", disable=not verbose):
        delta = np.zeros_like(x)
        if restart > 0:  # random start inside the budget
            delta = _project(rng.uniform(-eps, eps, size=x.shape).astype(np.float32) * pixels, norm, eps)
        for _ in range(max_iter):
            current = np.clip(x + delta, 0.0, 1.0).astype(np.float32)
            gradient = np.zeros_like(x)
            for _ in range(eot_samples):
                gradient += estimator.loss_gradient(_noisy(current, noise_mask, sigma, generator), one_hot)
            gradient *= pixels
            if norm == np.inf:
                step = np.sign(gradient)
            else:
                lengths = np.sqrt((gradient.reshape(len(x), -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)
                step = gradient / np.maximum(lengths, 1e-12)
            delta = _project(delta + eps_step * step, norm, eps)
            delta = ((np.clip(x + delta, 0.0, 1.0) - x) * pixels).astype(np.float32)
        candidate = (x + delta).astype(np.float32)
        score = right_fraction(candidate)
        better = score < best_score
        best[better], best_score[better] = candidate[better], score[better]
    return best
