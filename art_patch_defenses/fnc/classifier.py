"""FNC as an ART classifier: a ``PyTorchClassifier`` whose model carries feature norm clipping layers.

Every ART attack given this estimator attacks the defended forward pass white-box with exact gradients:
FNC is differentiable, so no BPDA is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_patch_defenses.fnc.clipping import (
    _recalibrate,
    cascaded_modules,
    chosen_modules,
    clipped_modules,
    fnc_layers,
    insert_fnc,
    set_alpha,
)
from art_patch_defenses.models.registry import classifier_params
from art_patch_defenses.validation import CheckedInputsMixin, check_images

#: The paper's clipping parameter on CIFAR-10, the default for new FNC layers.
DEFAULT_ALPHA = 1.2


class PyTorchFNCClassifier(CheckedInputsMixin, PyTorchClassifier):
    """A ``PyTorchClassifier`` with an FNC layer after each cascaded module of ``model``.

    Paper: Yu et al., "Defending against Universal Adversarial Patches by Clipping Feature Norms", ICCV 2021.

    :param model: the undefended model (left untouched; a copy gets the FNC layers), or a model that already
        carries FNC layers (from :func:`insert_fnc`, or the copy ART's ``clone_for_refitting`` passes), which is
        used as it is: no layer is added, and ``n_fnc`` / ``insertion_points``, if given, must describe its layers.
    :param alpha: clipping parameter (paper: 1.2 on CIFAR-10), or one per FNC layer in forward order;
        ``set_params(alpha=...)`` changes it in place. Default: 1.2 for new layers; a model that already carries
        FNC layers keeps theirs.
    :param n_fnc: number of FNC layers (the last block and the rest evenly spaced); default all blocks.
    :param insertion_points: module names to clip after, for architectures not found by type.
    The other arguments are :class:`art.estimators.classification.PyTorchClassifier`'s; ``predict``,
    ``loss_gradient`` and ``fit`` check their inputs (:class:`~art_patch_defenses.validation.CheckedInputsMixin`).
    An ``optimizer`` bound to an undefended ``model``'s parameters is re-created (same type and settings) for the
    copy; with a model that already carries FNC layers it is used as given.
    """

    estimator_params = PyTorchClassifier.estimator_params + ["alpha", "n_fnc", "insertion_points"]

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        input_shape: tuple[int, ...],
        nb_classes: int,
        alpha: float | Sequence[float] | None = None,
        n_fnc: int | None = None,
        insertion_points: Sequence[str] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        if fnc_layers(model):
            defended = model
            if n_fnc is None and insertion_points is None:
                n_fnc, insertion_points = _describe_placement(defended)
            else:
                name = "n_fnc" if n_fnc is not None else "insertion_points"
                _check_placement(defended, n_fnc, insertion_points, name)
            if alpha is not None:
                set_alpha(defended, alpha)
        else:
            defended = insert_fnc(model, DEFAULT_ALPHA if alpha is None else alpha, n_fnc, insertion_points)
            if optimizer is not None:
                # The optimizer given is bound to the undefended model's parameters, not to the copy's.
                optimizer = type(optimizer)(defended.parameters(), **optimizer.defaults)
        super().__init__(defended, loss, input_shape, nb_classes, optimizer=optimizer, **kwargs)
        self._n_fnc = n_fnc
        self._insertion_points = None if insertion_points is None else list(insertion_points)

    @property
    def alpha(self) -> float | tuple[float, ...]:
        """The clipping parameter of the FNC layers: one number when they share it, else one per layer."""
        alphas = tuple(layer.alpha for layer in fnc_layers(self.model))
        return alphas[0] if len(set(alphas)) == 1 else alphas

    @alpha.setter
    def alpha(self, value: float | Sequence[float]) -> None:
        set_alpha(self.model, value)

    @property
    def n_fnc(self) -> int | None:
        """How many cascaded modules were chosen for clipping (None: all of them)."""
        return self._n_fnc

    @n_fnc.setter
    def n_fnc(self, value: int | None) -> None:
        _check_placement(self.model, value, self._insertion_points, "n_fnc")
        self._n_fnc = value

    @property
    def insertion_points(self) -> list[str] | None:
        """The module names given for clipping (None: found by type)."""
        return self._insertion_points

    @insertion_points.setter
    def insertion_points(self, value: Sequence[str] | None) -> None:
        _check_placement(self.model, self._n_fnc, value, "insertion_points")
        self._insertion_points = None if value is None else list(value)

    @property
    def fnc_layer_count(self) -> int:
        """How many FNC layers the model carries."""
        return len(fnc_layers(self.model))

    def set_params(self, **kwargs: Any) -> None:
        """ART's ``set_params``, with the FNC layers fixed: ``n_fnc`` and ``insertion_points`` are accepted (and
        checked together) only when they describe the layers the model carries, and ``model`` only when it is the
        estimator's own model, so ``set_params(**get_params())`` round-trips.

        ART would store a new ``model`` unwrapped (its forward result then no longer indexes as ART expects), so
        replacing the model is refused: build a new ``PyTorchFNCClassifier`` instead.
        """
        if "model" in kwargs:
            if kwargs.pop("model") is not self.model:
                raise ValueError("model cannot be replaced with set_params; build a new PyTorchFNCClassifier")
        placement = {}
        if "n_fnc" in kwargs or "insertion_points" in kwargs:
            n_fnc = kwargs.pop("n_fnc", self._n_fnc)
            points = kwargs.pop("insertion_points", self._insertion_points)
            changed = "n_fnc" if n_fnc != self._n_fnc else "insertion_points"
            _check_placement(self.model, n_fnc, points, changed)
            placement = {"_n_fnc": n_fnc, "_insertion_points": None if points is None else list(points)}
        super().set_params(**kwargs)
        for key, value in placement.items():
            setattr(self, key, value)

    def recalibrate_batchnorm(
        self, x: np.ndarray, batch_size: int = 256, augment: bool = True, verbose: bool = True
    ) -> None:
        """Re-estimate the BatchNorm statistics on training images ``x`` (one pass, with the training
        augmentation unless ``augment=False``), as the paper does after inserting FNC.

        :param x: images in the estimator's own layout (NCHW, or NHWC if ``channels_first=False``) and value range;
            the estimator's own normalisation is applied, and the model gets the layout ``predict`` gives it.
        :raises ValueError: for images of the wrong layout or shape, or outside ``clip_values``.
        """
        clip_values = None
        if self.clip_values is not None:
            # Per-feature clip values reduce to the widest range: this is a sanity check, not a projection.
            clip_values = (float(np.min(self.clip_values[0])), float(np.max(self.clip_values[1])))
        check_images(x, "x", input_shape=self.input_shape, channels_first=self.channels_first, clip_values=clip_values)
        mean = std = None
        if self.preprocessing is not None and hasattr(self.preprocessing, "mean"):
            mean = tuple(np.asarray(self.preprocessing.mean, dtype=np.float32).reshape(-1).tolist())
            std = tuple(np.asarray(self.preprocessing.std, dtype=np.float32).reshape(-1).tolist())
        _recalibrate(self.model, x, mean, std, batch_size, augment, 0, verbose, self.channels_first)


def _check_placement(model: nn.Module, n_fnc: int | None, insertion_points: Sequence[str] | None, name: str) -> None:
    """Raise unless ``insert_fnc`` with these settings would have clipped exactly the modules that are clipped."""
    verb = "are" if name == "insertion_points" else "is"
    try:
        wanted = chosen_modules(model, n_fnc, insertion_points)
    except ValueError as error:
        raise ValueError(f"{name} {verb} fixed when the layers are inserted: {error}") from error
    if wanted != clipped_modules(model):
        raise ValueError(
            f"{name} {verb} fixed when the layers are inserted: n_fnc={n_fnc}, insertion_points={insertion_points} "
            f"would clip {wanted}, the model clips {clipped_modules(model)}; build a new PyTorchFNCClassifier"
        )


def _describe_placement(model: nn.Module) -> tuple[int | None, list[str] | None]:
    """The ``(n_fnc, insertion_points)`` that reproduce the FNC layers of ``model``, the simplest first."""
    clipped = clipped_modules(model)
    blocks = cascaded_modules(model)
    if clipped == blocks:
        return None, None
    if set(clipped) <= set(blocks) and chosen_modules(model, len(clipped)) == clipped:
        return len(clipped), None
    return None, clipped


def fnc_classifier(
    classifier: PyTorchClassifier,
    alpha: float | Sequence[float] = 1.2,
    n_fnc: int | None = None,
    insertion_points: Sequence[str] | None = None,
) -> PyTorchFNCClassifier:
    """Wrap an existing ART ``PyTorchClassifier`` with FNC: same loss, shapes, clip values, normalisation,
    defences and device; the input classifier is left untouched."""
    params = classifier_params(classifier)
    model = params.pop("model")
    return PyTorchFNCClassifier(model, alpha=alpha, n_fnc=n_fnc, insertion_points=insertion_points, **params)


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None, weights_path: str | None = None):
    """Armory-style factory: a registered model (``models.get_art_model``) wrapped with FNC.

    ``model_kwargs``: ``name``, ``weights`` and the FNC settings ``alpha``, ``n_fnc``, ``insertion_points``.
    """
    from art_patch_defenses.models import get_art_model as get_base_model

    model_kwargs = dict(model_kwargs)
    fnc_kwargs = {key: model_kwargs.pop(key) for key in ("alpha", "n_fnc", "insertion_points") if key in model_kwargs}
    return fnc_classifier(get_base_model(model_kwargs, wrapper_kwargs, weights_path), **fnc_kwargs)
