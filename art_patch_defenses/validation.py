"""Input checks shared by every public entry point: a clear ``ValueError`` that names the argument."""

from __future__ import annotations

import numpy as np


def check_images(
    x: np.ndarray,
    name: str = "x",
    input_shape: tuple[int, ...] | None = None,
    channels_first: bool = True,
    clip_values: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Check a batch of images and return it unchanged.

    :param x: images, ``(N, C, H, W)`` if ``channels_first`` else ``(N, H, W, C)``.
    :param input_shape: the expected shape of one sample in the same layout, if known.
    :param clip_values: the allowed value range, if any.
    :raises ValueError: for a non-array, wrong rank, empty batch, the other layout, wrong shape, NaN or
        infinity, or values outside ``clip_values``.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        layout = "(N, C, H, W)" if channels_first else "(N, H, W, C)"
        raise ValueError(f"{name} must be a 4-D batch {layout}, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape})")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        swapped = tuple(input_shape[1:]) + tuple(input_shape[:1]) if channels_first else (
            tuple(input_shape[-1:]) + tuple(input_shape[:-1])
        )
        hint = ""
        if tuple(x.shape[1:]) == swapped:
            hint = " (it looks NHWC; pass channels_first=False or transpose)" if channels_first else (
                " (it looks NCHW; pass channels_first=True or transpose)"
            )
        raise ValueError(f"{name} has sample shape {tuple(x.shape[1:])}, expected {tuple(input_shape)}{hint}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if clip_values is not None:
        low, high = clip_values
        if x.min() < low - 1e-6 or x.max() > high + 1e-6:
            raise ValueError(
                f"{name} has values in [{x.min():.4g}, {x.max():.4g}], outside clip_values [{low}, {high}]"
                " (images are expected as floats in [0, 1], not 0-255)"
            )
    return x


def check_labels(y: np.ndarray, n: int, nb_classes: int, name: str = "y") -> np.ndarray:
    """Return integer labels ``(n,)`` from indices or one-hot rows, checking their count and range."""
    y = np.asarray(y)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must hold {n} labels (indices or one-hot), got shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= nb_classes):
        raise ValueError(f"{name} has labels outside [0, {nb_classes - 1}]")
    return y.astype(np.int64)
