"""FNC as an ART classifier: a ``PyTorchClassifier`` whose model carries feature norm clipping layers.

Every ART attack given this estimator attacks the defended forward pass white-box with exact gradients:
FNC is differentiable, so no BPDA is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from art.estimators.classification import PyTorchClassifier

from art_patch_defenses.fnc.clipping import fnc_layers, insert_fnc, recalibrate_batchnorm, set_alpha
from art_patch_defenses.models.registry import classifier_params


class PyTorchFNCClassifier(PyTorchClassifier):
    """A ``PyTorchClassifier`` with an FNC layer after each cascaded module of ``model``.

    Paper: Yu et al., "Defending against Universal Adversarial Patches by Clipping Feature Norms", ICCV 2021.

    :param model: the undefended model (left untouched; a copy gets the FNC layers).
    :param alpha: clipping parameter (paper: 1.2 on CIFAR-10); ``set_params(alpha=...)`` changes it in place.
    :param n_fnc: number of FNC layers (the last block and the rest evenly spaced); default all blocks.
    :param insertion_points: module names to clip after, for architectures not found by type.
    The other arguments are :class:`art.estimators.classification.PyTorchClassifier`'s. An ``optimizer`` bound
    to ``model``'s parameters is re-created (same type and settings) for the copy.
    """

    estimator_params = PyTorchClassifier.estimator_params + ["alpha", "n_fnc", "insertion_points"]

    def __init__(
        self,
        model,
        loss,
        input_shape: tuple[int, ...],
        nb_classes: int,
        alpha: float = 1.2,
        n_fnc: int | None = None,
        insertion_points: Sequence[str] | None = None,
        optimizer=None,
        **kwargs: Any,
    ) -> None:
        defended = insert_fnc(model, alpha, n_fnc=n_fnc, insertion_points=insertion_points)
        if optimizer is not None:
            optimizer = type(optimizer)(defended.parameters(), **optimizer.defaults)
        super().__init__(defended, loss, input_shape, nb_classes, optimizer=optimizer, **kwargs)
        self._alpha = fnc_layers(defended)[0].alpha
        self._n_fnc = n_fnc
        self._insertion_points = None if insertion_points is None else list(insertion_points)

    @property
    def alpha(self) -> float:
        """The clipping parameter of every FNC layer."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        set_alpha(self.model, value)
        self._alpha = float(value)

    @property
    def n_fnc(self) -> int | None:
        return self._n_fnc

    @n_fnc.setter
    def n_fnc(self, value: int | None) -> None:
        if value != self._n_fnc:
            raise ValueError("n_fnc is fixed when the layers are inserted; build a new PyTorchFNCClassifier")

    @property
    def insertion_points(self) -> list[str] | None:
        return self._insertion_points

    @insertion_points.setter
    def insertion_points(self, value: Sequence[str] | None) -> None:
        if (None if value is None else list(value)) != self._insertion_points:
            raise ValueError("insertion_points are fixed when the layers are inserted; build a new classifier")

    @property
    def fnc_layer_count(self) -> int:
        """How many FNC layers the model carries."""
        return len(fnc_layers(self.model))

    def recalibrate_batchnorm(
        self, x: np.ndarray, batch_size: int = 256, augment: bool = True, verbose: bool = True
    ) -> None:
        """Re-estimate the BatchNorm statistics on training images ``x`` (one pass, with the training
        augmentation unless ``augment=False``), as the paper does after inserting FNC. ``x`` is in [0, 1]; the
        estimator's own normalisation is applied."""
        mean = std = None
        if self.preprocessing is not None and hasattr(self.preprocessing, "mean"):
            mean = np.asarray(self.preprocessing.mean, dtype=np.float32).reshape(-1)
            std = np.asarray(self.preprocessing.std, dtype=np.float32).reshape(-1)
            mean, std = tuple(mean.tolist()), tuple(std.tolist())
        recalibrate_batchnorm(self.model, x, mean, std, batch_size=batch_size, augment=augment, verbose=verbose)


def fnc_classifier(
    classifier: PyTorchClassifier,
    alpha: float = 1.2,
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
