"""MRS patch localisation by joint voting (section 3.2 of the paper).

Slide an ``s x s`` block over the image (stride 1 by default), inpaint the block (OpenCV, Telea), classify every
inpainted copy: the prediction map. Its most frequent label is the attacked class ``c_t``; the blocks whose
inpainting changes the label away from ``c_t`` vote. Each candidate block is scored by a cross-shaped template:
the voting blocks among itself and the blocks shifted along its row or its column while still sharing at least
``overlap`` columns (rows) with it. The best block, widened by ``margin`` pixels, is the patch region; when two
disconnected groups of blocks score above ``tau`` the localisation abstains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage


@dataclass
class Localization:
    """One image's localisation: the region mask ``(H, W)``, the best block's top-left ``(row, col)``, whether
    it abstained, the prediction map over block positions, the template scores and ``c_t``."""

    mask: np.ndarray
    location: tuple[int, int]
    abstain: bool
    prediction_map: np.ndarray
    scores: np.ndarray
    attacked_class: int


def block_starts(size: int, block: int, stride: int = 1) -> list[int]:
    """Start offsets of a ``block``-wide window along an axis of ``size`` at ``stride``, the last flush with the
    edge."""
    starts = list(range(0, size - block + 1, stride))
    return starts if starts[-1] == size - block else [*starts, size - block]


def inpainted_copies(image: np.ndarray, positions: list[tuple[int, int]], block: int,
                     radius: int = 3) -> np.ndarray:
    """``(P, C, H, W)`` copies of a ``(C, H, W)`` [0, 1] image, each with one block inpainted (Telea); pixels
    outside the block keep their exact values."""
    channels, height, width = image.shape
    as_uint8 = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    if channels == 1:
        as_uint8 = as_uint8[:, :, 0]
    copies = np.repeat(image[None], len(positions), axis=0)
    hole = np.zeros((height, width), np.uint8)
    for k, (r, c) in enumerate(positions):
        hole[:] = 0
        hole[r : r + block, c : c + block] = 1
        filled = cv2.inpaint(as_uint8, hole, radius, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
        filled = filled[:, :, None] if channels == 1 else filled
        copies[k, :, r : r + block, c : c + block] = filled[r : r + block, c : c + block].transpose(2, 0, 1)
    return copies


def template_scores(votes: np.ndarray, reach: int) -> np.ndarray:
    """Cross-template scores on a grid of block positions: for each position, the number of voting positions on
    its row or column at most ``reach`` grid steps away (itself counted once); real-valued votes are summed."""
    votes = votes.astype(np.int64) if votes.dtype == bool else votes
    arm = np.ones(2 * reach + 1, np.int64)
    horizontal = ndimage.convolve1d(votes, arm, axis=1, mode="constant")
    vertical = ndimage.convolve1d(votes, arm, axis=0, mode="constant")
    return horizontal + vertical - votes


def region_mask(shape: tuple[int, int], location: tuple[int, int], block: int, margin: int) -> np.ndarray:
    """The localised region ``(H, W)``: the ``block``-sided square at ``location`` (top-left), widened by
    ``margin`` pixels on every side and cut at the image border."""
    row, col = location
    mask = np.zeros(shape, dtype=bool)
    mask[max(0, row - margin) : row + block + margin, max(0, col - margin) : col + block + margin] = True
    return mask


def ambiguous(scores: np.ndarray, tau: float) -> bool:
    """The abstain rule: the positions scoring above ``tau`` form more than one connected group (8-connected)."""
    _, groups = ndimage.label(scores > tau, structure=np.ones((3, 3)))
    return groups > 1


def localize(
    image: np.ndarray,
    classify: Callable[[np.ndarray], np.ndarray],
    block: int,
    tau: float,
    stride: int = 1,
    margin: int = 3,
    overlap: int = 1,
) -> Localization:
    """Localise a patch in one ``(C, H, W)`` image.

    :param classify: maps a batch ``(B, C, H, W)`` to labels ``(B,)`` (the base classifier, batched by the caller).
    :param block: side ``s`` of the inpainted block (the patch side the defence expects).
    :param tau: template score above which a block is a candidate; two disconnected candidate groups abstain.
    :param overlap: ``m``: the template's arms hold the blocks that share at least ``m`` rows / columns with the
        centre block.
    """
    height, width = image.shape[1:]
    rows, cols = block_starts(height, block, stride), block_starts(width, block, stride)
    labels = classify(inpainted_copies(image, [(r, c) for r in rows for c in cols], block))
    prediction_map = labels.reshape(len(rows), len(cols))
    attacked_class = int(np.bincount(labels).argmax())
    scores = template_scores(prediction_map != attacked_class, (block - overlap) // stride)
    i, j = np.unravel_index(int(scores.argmax()), scores.shape)
    location = (rows[i], cols[j])
    return Localization(mask=region_mask((height, width), location, block, margin), location=location,
                        abstain=ambiguous(scores, tau), prediction_map=prediction_map, scores=scores,
                        attacked_class=attacked_class)
