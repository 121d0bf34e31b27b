"""Building a :class:`PyTorchMRS` around a registered model, and its Armory-style model factory."""

from __future__ import annotations

from typing import Any

from art_patch_defenses.mrs.estimator import PyTorchMRS
from art_patch_defenses.mrs.smoothing import from_255

_MRS_KEYS = ("sample_size", "n0", "alpha", "patch_size", "stride", "tau", "margin")


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                  weights_path: str | None = None) -> PyTorchMRS:
    """Armory-style factory: a registered classifier as the base of :class:`PyTorchMRS`.

    ``model_kwargs``: ``name``, ``weights`` (e.g. ``"mrs"`` for the noise-trained CIFAR ResNets), ``sigma_255``
    (noise std in the paper's 0-255 units) and the MRS settings ``sample_size``, ``n0``, ``alpha``,
    ``patch_size``, ``stride``, ``tau``, ``margin``; ``wrapper_kwargs`` go to ``make_classifier``.
    """
    from art_patch_defenses.models import build_model, make_classifier

    model_kwargs = dict(model_kwargs)
    name = model_kwargs.pop("name", None)
    if name is None:
        raise ValueError("model_kwargs needs 'name' (a registered model)")
    weights = weights_path or model_kwargs.pop("weights", None)
    settings: dict[str, Any] = {key: model_kwargs.pop(key) for key in _MRS_KEYS if key in model_kwargs}
    if "sigma_255" in model_kwargs:
        settings["sigma"] = from_255(float(model_kwargs.pop("sigma_255")))
    if model_kwargs:
        raise ValueError(f"unknown model_kwargs {sorted(model_kwargs)}; known: name, weights, sigma_255, "
                         f"{', '.join(_MRS_KEYS)}")
    return make_classifier(build_model(name, weights), name, estimator_class=PyTorchMRS,
                           **(wrapper_kwargs or {}), **settings)
