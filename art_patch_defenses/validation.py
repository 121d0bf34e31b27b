"""Input checks shared by every public entry point: a clear ``ValueError`` that names the argument, the expected
and the received.

The contract: images are a numeric 4-D numpy batch of at least one sample in the estimator's layout
(``channels_first``) and ``input_shape``, finite and within ``clip_values`` (float64 and integer arrays are accepted
and cast to float32); labels are integer class indices (integral floats accepted) or one-hot rows.
"""

from __future__ import annotations

from typing import Any

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


def check_labels(y: Any, n: int, nb_classes: int, name: str = "y") -> np.ndarray:
    """Return integer labels ``(n,)`` from class indices or one-hot rows, checking their count, type and range.

    :raises ValueError: for a wrong count or shape, non-numeric or non-integral values (2.7 is not a class), a row
        that is not one-hot, or a class outside ``[0, nb_classes - 1]``.
    """
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold class indices or one-hot rows, got dtype {y.dtype}")
    if y.ndim == 2:
        if y.shape != (n, nb_classes) or not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
            raise ValueError(f"{name} as a 2-D array must be one-hot rows of shape {(n, nb_classes)}, "
                             f"got shape {y.shape}" + ("" if y.shape != (n, nb_classes) else " with non-one-hot rows"))
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must hold {n} labels (indices or one-hot), got shape {y.shape}")
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
        raise ValueError(f"{name} must hold integer class indices, got non-integral values such as "
                         f"{y[~np.isfinite(y) | (y != np.round(y))][0]!r}")
    if len(y) and (y.min() < 0 or y.max() >= nb_classes):
        raise ValueError(f"{name} has labels outside [0, {nb_classes - 1}] (got {y.min()}..{y.max()})")
    return y.astype(np.int64)


def check_estimator_inputs(estimator, x: np.ndarray, name: str = "x", clip: bool = True) -> np.ndarray:
    """``x`` checked against any ART estimator's input shape, layout and clip values, as float32 (an estimator
    that has ``image_shape``, e.g. one whose ``input_shape`` is an encoded one, is checked against that)."""
    shape = getattr(estimator, "image_shape", None) or tuple(estimator.input_shape)
    check_images(x, name, input_shape=shape, clip_values=estimator.clip_values if clip else None,
                 channels_first=getattr(estimator, "channels_first", True))
    return as_float_images(x)


def as_float_images(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 (float64 and integer images are cast; float32 is returned as it is)."""
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _is_tensor(value: Any) -> bool:
    """A framework tensor (torch, tensorflow), recognised without importing the framework."""
    return type(value).__module__.split(".")[0] in ("torch", "tensorflow")


class CheckedInputsMixin:
    """The input contract at an ART estimator's public entry points: ``predict``, ``loss_gradient``,
    ``class_gradient`` and ``fit`` check ``x`` (and labels) against the estimator before ART sees them, so that a
    wrong layout, size, value range, NaN or an empty batch gives a clear error instead of a deep traceback or a
    silently wrong answer. Put it before the ART estimator in the bases.

    ``loss_gradient`` and ``class_gradient`` do not check the clip range: attacks with expectation over noise
    (randomized smoothing) differentiate noisy copies beyond it; they leave framework tensors, which ART's
    PyTorch attacks build and pass back themselves, as they are.
    """

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one input image in the estimator's layout."""
        return tuple(self.input_shape)

    def check_inputs(self, x: np.ndarray, name: str = "x", clip: bool = True) -> np.ndarray:
        """``x`` checked against the estimator (layout, shape, finite values, within ``clip_values`` unless
        ``clip=False``) as float32. A framework tensor (ART's PyTorch attacks judge their own batches with
        ``predict``) is taken to numpy first."""
        if _is_tensor(x):
            x = x.detach().cpu().numpy()
        check_images(x, name, input_shape=self.image_shape, clip_values=self.clip_values if clip else None,
                     channels_first=self.channels_first)
        return as_float_images(x)

    def predict(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> np.ndarray:
        return super().predict(self.check_inputs(x), batch_size=batch_size, **kwargs)

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> np.ndarray:
        if not _is_tensor(x):  # ART's PyTorch attacks pass tensors they made themselves: left as they are
            x = self.check_inputs(x, clip=False)
            if not _is_tensor(y):  # checked, then one-hot as ART's loss expects
                y = np.eye(self.nb_classes, dtype=np.float32)[check_labels(y, len(x), self.nb_classes)]
        return super().loss_gradient(x, y, **kwargs)

    def class_gradient(self, x: np.ndarray, label: Any = None, **kwargs: Any) -> np.ndarray:
        if not _is_tensor(x):
            x = self.check_inputs(x, clip=False)
        return super().class_gradient(x, label=label, **kwargs)

    def fit(self, x: np.ndarray, y: np.ndarray, *args: Any, **kwargs: Any) -> None:
        x = self.check_inputs(x)
        labels = check_labels(y, len(x), self.nb_classes)
        return super().fit(x, np.eye(self.nb_classes, dtype=np.float32)[labels], *args, **kwargs)
