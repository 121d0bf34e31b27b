"""ScaleCert's occluding windows: side ``p + r - 1`` slid at stride 1, merged into fixed groups (section 3.2).

Merging is fixed by the image size, the patch size, ``r`` and ``tau`` alone, never by an image's candidate
region: detection and certification must judge the same windows, or the certificate says nothing about the
windows detection occludes. Each merged window is the union of a ``g x g`` block of neighbouring windows, with
``g`` the largest group in which any two windows overlap by more than ``tau`` of a window's area, so every
original window, and therefore every patch placement, lies inside a merged one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from art_patch_defenses.geometry import affected_features, all_locations


def merge_group(window_hw: tuple[int, int], tau: float) -> int:
    """Largest ``g`` such that windows up to ``g - 1`` positions apart (along both axes) overlap by more than
    ``tau`` of a window's area; 1 means no merging."""
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    height, width = window_hw
    group = 1
    while group < min(window_hw) and (height - group) * (width - group) > tau * height * width:
        group += 1
    return group


@dataclass(frozen=True)
class OcclusionWindows:
    """The merged occluding windows for one patch size, with what the detector needs to know of them.

    :param boxes: ``(W, 4)`` merged windows ``[row0, row1) x [col0, col1)``.
    :param pixels: ``(W, H, W_img)`` boolean pixel masks of the boxes.
    :param features: ``(W, h, w)`` superficial features each box can change (excluded when it is occluded).
    :param contains: ``(L, W)`` True where box ``w`` contains the whole patch at placement ``l``.
    :param placements: ``(L, 2)`` top-left of every patch placement.
    :param unmerged_count: how many ``p + r - 1`` windows slide over the image before merging.
    """

    boxes: np.ndarray
    pixels: np.ndarray
    features: np.ndarray
    contains: np.ndarray
    placements: np.ndarray
    unmerged_count: int


def sliding_windows(image_hw: tuple[int, int], patch_hw: tuple[int, int], r: int) -> tuple[tuple[int, int], np.ndarray]:
    """Side and ``(K, 2)`` top-left corners of every ``p + r - 1`` window at stride 1 (clipped to the image)."""
    if r < 1:
        raise ValueError(f"r must be a positive integer, got {r}")
    window = (min(patch_hw[0] + r - 1, image_hw[0]), min(patch_hw[1] + r - 1, image_hw[1]))
    return window, all_locations(image_hw, window)


def occlusion_windows(image_hw: tuple[int, int], patch_hw: tuple[int, int], r: int, tau: float,
                      chain: list[tuple[int, int, int]], map_hw: tuple[int, int]) -> OcclusionWindows:
    """Merged occluding windows for a ``patch_hw`` patch on an ``image_hw`` image (see the module docstring)."""
    window, corners = sliding_windows(image_hw, patch_hw, r)
    group = merge_group(window, tau)
    axes = []
    for axis in range(2):
        starts = np.unique(corners[:, axis])
        axes.append([(block[0], block[-1] + window[axis]) for block in
                     (starts[i : i + group] for i in range(0, len(starts), group))])
    boxes = np.array([(r0, r1, c0, c1) for r0, r1 in axes[0] for c0, c1 in axes[1]])
    pixels = np.zeros((len(boxes), *image_hw), dtype=bool)
    for mask, (r0, r1, c0, c1) in zip(pixels, boxes, strict=True):
        mask[r0:r1, c0:c1] = True
    placements = all_locations(image_hw, patch_hw)
    rows, cols = placements[:, :1], placements[:, 1:]
    contains = ((rows >= boxes[None, :, 0]) & (rows + patch_hw[0] <= boxes[None, :, 1])
                & (cols >= boxes[None, :, 2]) & (cols + patch_hw[1] <= boxes[None, :, 3]))
    return OcclusionWindows(boxes=boxes, pixels=pixels, features=affected_features(pixels, chain, map_hw),
                            contains=contains, placements=placements, unmerged_count=len(corners))

