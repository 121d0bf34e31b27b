"""Building a :class:`PyTorchScaleCert` around a registered model, and its Armory-style model factory."""

from __future__ import annotations

from art_patch_defenses.models.registry import wrap_registered_model
from art_patch_defenses.scalecert.estimator import PyTorchScaleCert

_SCALECERT_KEYS = ("superficial_layer", "top_k", "patch_size", "r", "tau", "flip_average")


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                  weights_path: str | None = None) -> PyTorchScaleCert:
    """Armory-style factory: a registered classifier wrapped as :class:`PyTorchScaleCert`.

    ``model_kwargs``: ``name``, ``weights`` (``"scalecert"`` for the SIN-fine-tuned CIFAR ResNet-20 and MNIST
    CNN) and the ScaleCert settings ``superficial_layer``, ``top_k``, ``patch_size``, ``r``, ``tau``,
    ``flip_average`` (True: every image and occluded copy is scored with its mirror, twice the cost);
    ``wrapper_kwargs`` go to ``make_classifier`` (e.g. ``device_type``).
    """
    return wrap_registered_model(model_kwargs, wrapper_kwargs, weights_path, PyTorchScaleCert, _SCALECERT_KEYS)
