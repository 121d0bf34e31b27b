"""Building a :class:`PyTorchScaleCert` around a registered model, and its Armory-style model factory."""

from __future__ import annotations

from typing import Any

from art_patch_defenses.scalecert.estimator import PyTorchScaleCert

_SCALECERT_KEYS = ("superficial_layer", "top_k", "patch_size", "r", "tau")


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                  weights_path: str | None = None) -> PyTorchScaleCert:
    """Armory-style factory: a registered classifier wrapped as :class:`PyTorchScaleCert`.

    ``model_kwargs``: ``name``, ``weights`` (``"scalecert"`` for the SIN-fine-tuned CIFAR ResNet-20 and MNIST
    CNN) and the ScaleCert settings ``superficial_layer``, ``top_k``, ``patch_size``, ``r``, ``tau``;
    ``wrapper_kwargs`` go to ``make_classifier`` (e.g. ``device_type``).
    """
    from art_patch_defenses.models import build_model, make_classifier

    model_kwargs = dict(model_kwargs)
    name = model_kwargs.pop("name", None)
    if name is None:
        raise ValueError("model_kwargs needs 'name' (a registered model)")
    weights = weights_path or model_kwargs.pop("weights", None)
    settings: dict[str, Any] = {key: model_kwargs.pop(key) for key in _SCALECERT_KEYS if key in model_kwargs}
    if model_kwargs:
        raise ValueError(f"unknown model_kwargs {sorted(model_kwargs)}; known: name, weights, "
                         f"{', '.join(_SCALECERT_KEYS)}")
    return make_classifier(build_model(name, weights), name, estimator_class=PyTorchScaleCert,
                           **(wrapper_kwargs or {}), **settings)
