"""PatchCleanser's double-masking inference and its certificate, on prediction maps (framework-free).

A prediction map ``(N, M, M)`` holds the base classifier's label for every image with masks ``i`` and ``j``
applied together; it is symmetric and its diagonal holds the one-mask predictions.
"""

from __future__ import annotations

import numpy as np


def double_masking(one_mask: np.ndarray, two_mask_rows: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Algorithm 1 of the paper: the robust label of every image.

    :param one_mask: ``(N, M)`` one-mask predictions.
    :param two_mask_rows: ``{(image, mask): (M,) labels with that mask and each other mask}`` for every
        one-mask prediction that disagrees with its image's majority (the only rows the algorithm reads).
    :return: ``(N,)`` labels: the unanimous one-mask label; else the first disagreeing mask (in index order)
        whose two-mask predictions all agree with it; else the majority (most frequent, lowest label on a tie).
    """
    labels = np.empty(len(one_mask), dtype=np.int64)
    for n, row in enumerate(one_mask):
        values, counts = np.unique(row, return_counts=True)
        majority = values[np.argmax(counts)]
        labels[n] = majority
        for i in np.flatnonzero(row != majority):
            if np.all(two_mask_rows[(n, int(i))] == row[i]):
                labels[n] = row[i]
                break
    return labels


def disagreeing_masks(one_mask: np.ndarray) -> list[tuple[int, int]]:
    """``(image, mask)`` pairs whose one-mask prediction differs from the image's majority."""
    pairs = []
    for n, row in enumerate(one_mask):
        values, counts = np.unique(row, return_counts=True)
        pairs += [(n, int(i)) for i in np.flatnonzero(row != values[np.argmax(counts)])]
    return pairs


def certified_from_map(prediction_map: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Theorem 1: certified iff every one- and two-mask prediction of the image is its label ``y``."""
    return np.all(prediction_map == np.asarray(y)[:, None, None], axis=(1, 2))


def double_masking_from_map(prediction_map: np.ndarray) -> np.ndarray:
    """:func:`double_masking` with every two-mask row read from a full prediction map."""
    one_mask = np.diagonal(prediction_map, axis1=1, axis2=2)
    rows = {(n, i): prediction_map[n, i] for n, i in disagreeing_masks(one_mask)}
    return double_masking(one_mask, rows)
