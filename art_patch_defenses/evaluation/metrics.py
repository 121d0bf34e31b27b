"""Metrics beyond Armory's accuracy: pixel-level detection quality of patch masks."""

from __future__ import annotations

import numpy as np


def mask_precision_recall_f1(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Pixel precision, recall and F1 of predicted patch masks against the true ones, pooled over the batch.

    :param predicted: boolean ``(N, H, W)`` masks (True = detected patch pixel).
    :param true: boolean ``(N, H, W)`` masks of the real patch pixels.
    """
    predicted, true = np.asarray(predicted, bool), np.asarray(true, bool)
    if predicted.shape != true.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {true.shape}")
    hits = np.logical_and(predicted, true).sum()
    precision = float(hits / predicted.sum()) if predicted.any() else 0.0
    recall = float(hits / true.sum()) if true.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of an accuracy ``correct / total`` (statsmodels, ``method="beta"``, as
    ART's randomized smoothing uses), at level ``confidence``."""
    from statsmodels.stats.proportion import proportion_confint

    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total >= 1, got {correct} of {total}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    low, high = proportion_confint(int(correct), int(total), alpha=1 - confidence, method="beta")
    return float(low), float(high)
