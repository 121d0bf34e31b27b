"""Building a :class:`PyTorchMRS` around a registered model, and its Armory-style model factory."""

from __future__ import annotations

from art_patch_defenses.models.registry import wrap_registered_model
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
    model_kwargs = dict(model_kwargs)
    if "sigma_255" in model_kwargs:
        model_kwargs["sigma"] = from_255(float(model_kwargs.pop("sigma_255")))
    return wrap_registered_model(model_kwargs, wrapper_kwargs, weights_path, PyTorchMRS, ("sigma", *_MRS_KEYS))
