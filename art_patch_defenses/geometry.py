"""Patch geometry shared by every method and attack: sizes, locations, masks and pasting.

Conventions: images are NCHW (or NHWC with ``channels_first=False``); a location is the (row, column) of a
patch's top-left pixel; a patch size is given in pixels (``int`` side or ``(height, width)``) or as a fraction of
the image area (``float`` in (0, 1), square, side rounded to the nearest pixel).
"""

from __future__ import annotations

import math

import numpy as np

PatchSize = int | float | tuple[int, int]


def patch_shape(size: PatchSize, image_hw: tuple[int, int]) -> tuple[int, int]:
    """Patch (height, width) in pixels for ``size`` on an image of ``image_hw``.

    :param size: pixels (``int`` side or ``(h, w)``) or a fraction of the image area (``float`` in (0, 1)).
    :raises ValueError: if the patch is empty or larger than the image.
    """
    height, width = image_hw
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise ValueError(f"patch_size as a fraction of the image area must be in (0, 1), got {size}")
        side = max(1, round(math.sqrt(size * height * width)))
        shape = (side, side)
    elif isinstance(size, (int, np.integer)):
        shape = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        shape = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"patch_size must be an int, a float fraction or a (height, width) pair, got {size!r}")
    if min(shape) < 1:
        raise ValueError(f"patch_size must be at least one pixel, got {shape}")
    if shape[0] > height or shape[1] > width:
        raise ValueError(f"patch_size {shape} is larger than the image {tuple(image_hw)}")
    return shape


def patch_area_fraction(shape: tuple[int, int], image_hw: tuple[int, int]) -> float:
    """Fraction of the image area a patch of ``shape`` covers."""
    return shape[0] * shape[1] / (image_hw[0] * image_hw[1])


def random_locations(
    n: int, image_hw: tuple[int, int], shape: tuple[int, int], seed: int | np.random.Generator | None = 0
) -> np.ndarray:
    """``(n, 2)`` top-left (row, column) locations, uniform over every position where the patch fits."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rows = rng.integers(0, image_hw[0] - shape[0] + 1, size=n)
    cols = rng.integers(0, image_hw[1] - shape[1] + 1, size=n)
    return np.stack([rows, cols], axis=1)


def all_locations(image_hw: tuple[int, int], shape: tuple[int, int], stride: int = 1) -> np.ndarray:
    """Every top-left location on a grid of ``stride``, always including the far edges; ``(k, 2)``."""
    def axis(length: int, size: int) -> list[int]:
        starts = list(range(0, length - size + 1, stride))
        if starts[-1] != length - size:
            starts.append(length - size)
        return starts

    grid = np.array([(r, c) for r in axis(image_hw[0], shape[0]) for c in axis(image_hw[1], shape[1])])
    return grid.reshape(-1, 2)


def patch_masks(image_hw: tuple[int, int], shape: tuple[int, int], locations: np.ndarray) -> np.ndarray:
    """Boolean masks ``(n, H, W)``, True on the patch at each location."""
    locations = np.asarray(locations).reshape(-1, 2)
    masks = np.zeros((len(locations), *image_hw), dtype=bool)
    for mask, (row, col) in zip(masks, locations, strict=True):
        if not (0 <= row <= image_hw[0] - shape[0] and 0 <= col <= image_hw[1] - shape[1]):
            raise ValueError(f"patch location {(row, col)} puts a {shape} patch outside the image {image_hw}")
        mask[row : row + shape[0], col : col + shape[1]] = True
    return masks


def expand_masks(masks: np.ndarray, x: np.ndarray, channels_first: bool = True) -> np.ndarray:
    """Float masks with the layout of ``x`` (a channel axis repeated), as ART's ``mask=`` arguments take them."""
    channel_axis = 1 if channels_first else 3
    expanded = np.repeat(np.expand_dims(masks, channel_axis), x.shape[channel_axis], axis=channel_axis)
    return expanded.astype(x.dtype)


def paste_patch(
    x: np.ndarray, patch: np.ndarray, locations: np.ndarray, channels_first: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``patch`` (CHW or HWC, like ``x``) into a copy of ``x`` at each sample's location.

    :return: the patched images and the boolean masks ``(n, H, W)`` of the pasted pixels.
    """
    image_hw = x.shape[2:4] if channels_first else x.shape[1:3]
    shape = patch.shape[1:3] if channels_first else patch.shape[0:2]
    masks = patch_masks(tuple(image_hw), tuple(shape), locations)
    full = expand_masks(masks, x, channels_first).astype(bool)
    patched = x.copy()
    for i, (row, col) in enumerate(np.asarray(locations).reshape(-1, 2)):
        if channels_first:
            patched[i, :, row : row + shape[0], col : col + shape[1]] = patch
        else:
            patched[i, row : row + shape[0], col : col + shape[1], :] = patch
    assert np.array_equal(patched[~full], x[~full])
    return patched, masks


def feature_window(patch: int, receptive_field: int, stride: int) -> int:
    """Side of the feature-space window a ``patch``-pixel patch can touch: ``ceil((p + r - 1) / s)``.

    A feature whose receptive field (``receptive_field`` pixels, features ``stride`` pixels apart) overlaps the
    patch lies in a window of this many features (PatchGuard, section 3.4).
    """
    if min(patch, receptive_field, stride) < 1:
        raise ValueError(
            f"patch, receptive_field and stride must be positive, got {patch}, {receptive_field}, {stride}"
        )
    return math.ceil((patch + receptive_field - 1) / stride)


def window_masks(map_hw: tuple[int, int], window_hw: tuple[int, int], wrap: tuple[bool, bool] = (False, False)
                 ) -> np.ndarray:
    """Boolean cell masks ``(P, X, Y)`` of every placement (stride 1) of a window on a feature map.

    A window larger than the map along an axis covers the whole axis (one placement). With ``wrap`` along an
    axis, placements start at every cell and run around the edge (de-randomized smoothing column bands).
    """
    axes = []
    for length, size, around in zip(map_hw, window_hw, wrap, strict=True):
        if size < 1:
            raise ValueError(f"window sides must be positive, got {window_hw}")
        size = min(size, length)
        if around and size < length:
            axes.append([(np.arange(start, start + size) % length) for start in range(length)])
        else:
            axes.append([np.arange(start, start + size) for start in range(length - size + 1)])
    masks = np.zeros((len(axes[0]) * len(axes[1]), *map_hw), dtype=bool)
    for k, (rows, cols) in enumerate((r, c) for r in axes[0] for c in axes[1]):
        masks[k][np.ix_(rows, cols)] = True
    return masks


def receptive_field(layers: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """Receptive field, stride and offset of the last layer of a chain of ``(kernel, stride, padding)`` layers.

    Output feature ``i`` of the chain sees input pixels ``[offset + i * stride, offset + i * stride + rf)``
    (``offset`` is negative where padding reaches outside the image).
    """
    field, stride, offset = 1, 1, 0
    for kernel, layer_stride, padding in layers:
        offset -= padding * stride
        field += (kernel - 1) * stride
        stride *= layer_stride
    return field, stride, offset


def receptive_intervals(map_length: int, input_length: int, layers: list[tuple[int, int, int]]) -> np.ndarray:
    """Boolean ``(map_length, input_length)``: True where feature ``i`` of the chain sees input pixel ``a``.

    Each feature's field is the interval :func:`receptive_field` gives (the chain's kernels, strides and paddings
    composed layer by layer), clipped to the image: padding contributes no pixel.
    """
    field, stride, offset = receptive_field(layers)
    starts = offset + stride * np.arange(map_length)
    pixels = np.arange(input_length)
    return (pixels[None, :] >= starts[:, None]) & (pixels[None, :] < starts[:, None] + field)


def back_project(kept: np.ndarray, layers: list[tuple[int, int, int]], input_hw: tuple[int, int]) -> np.ndarray:
    """Input region ``(..., H, W)`` that the features marked in ``kept`` ``(..., h, w)`` see through ``layers``.

    Pixels outside it cannot change a kept feature (ScaleCert's candidate region R, section 3.2).
    """
    rows = receptive_intervals(kept.shape[-2], input_hw[0], layers).astype(np.float32)
    cols = receptive_intervals(kept.shape[-1], input_hw[1], layers).astype(np.float32)
    return (rows.T @ kept.astype(np.float32) @ cols) > 0


def affected_features(pixels: np.ndarray, layers: list[tuple[int, int, int]], map_hw: tuple[int, int]) -> np.ndarray:
    """Features ``(..., h, w)`` whose receptive field meets the input pixels marked in ``pixels`` ``(..., H, W)``:
    the only features a change of those pixels can change."""
    rows = receptive_intervals(map_hw[0], pixels.shape[-2], layers).astype(np.float32)
    cols = receptive_intervals(map_hw[1], pixels.shape[-1], layers).astype(np.float32)
    return (rows @ pixels.astype(np.float32) @ cols.T) > 0


def mask_positions(length: int, patch: int, masks_per_axis: int) -> tuple[np.ndarray, int]:
    """PatchCleanser's mask starts along one axis and the mask side (Xiang et al., USENIX Security 2022, sec. 3.2).

    Stride ``s = ceil((n - p + 1) / k)``, mask side ``m = p + s - 1``, starts ``0, s, 2s, ...`` below ``n - m`` plus
    one flush with the far edge, so every placement of a ``p``-pixel patch lies inside one mask.
    """
    if not 1 <= patch <= length:
        raise ValueError(f"patch must be in [1, {length}] pixels, got {patch}")
    if masks_per_axis < 1:
        raise ValueError(f"masks_per_axis must be at least 1, got {masks_per_axis}")
    stride = math.ceil((length - patch + 1) / masks_per_axis)
    side = min(patch + stride - 1, length)
    starts = list(range(0, length - side, stride)) + [length - side]
    return np.asarray(starts), side


def mask_set(image_hw: tuple[int, int], patch: int, masks_per_axis: int) -> np.ndarray:
    """Boolean masks ``(M, H, W)`` (True = masked) of PatchCleanser's R-covering mask set for a square patch."""
    (rows, height), (cols, width) = (mask_positions(n, patch, masks_per_axis) for n in image_hw)
    masks = np.zeros((len(rows) * len(cols), *image_hw), dtype=bool)
    for k, (row, col) in enumerate((r, c) for r in rows for c in cols):
        masks[k, row : row + height, col : col + width] = True
    return masks
