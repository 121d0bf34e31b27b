"""Building a :class:`PyTorchRobustMasking` from a registered backbone, and its Armory-style model factory."""

from __future__ import annotations

from typing import Any

from art_patch_defenses.robust_masking.estimator import PyTorchRobustMasking

#: Registered models that are robust-masking backbones (local logits).
BACKBONE_MODELS = ("cifar_mask_ds", "cifar_bagnet", "mnist_bagnet")
_MASKING_KEYS = ("patch_size", "threshold", "feature_clip", "feature_type")


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                  weights_path: str | None = None) -> PyTorchRobustMasking:
    """Armory-style factory: a registered backbone wrapped as :class:`PyTorchRobustMasking`.

    ``model_kwargs``: ``name`` (one of :data:`BACKBONE_MODELS`), ``weights`` (a tag or a file) and the masking
    settings ``patch_size`` (pixels), ``threshold``, ``feature_clip``, ``feature_type``; ``wrapper_kwargs`` go to
    :func:`art_patch_defenses.models.make_classifier` (e.g. ``device_type``).
    """
    from art_patch_defenses.models import build_model, make_classifier

    model_kwargs = dict(model_kwargs)
    name = model_kwargs.pop("name", None)
    if name not in BACKBONE_MODELS:
        raise ValueError(f"model_kwargs 'name' must be a robust-masking backbone, one of "
                         f"{', '.join(BACKBONE_MODELS)}; got {name!r}")
    weights = weights_path or model_kwargs.pop("weights", None)
    masking: dict[str, Any] = {key: model_kwargs.pop(key) for key in _MASKING_KEYS if key in model_kwargs}
    if model_kwargs:
        raise ValueError(f"unknown model_kwargs {sorted(model_kwargs)}; known: name, weights, "
                         f"{', '.join(_MASKING_KEYS)}")
    if "feature_clip" in masking:
        masking["feature_clip"] = tuple(float(v) for v in masking["feature_clip"])
    return make_classifier(build_model(name, weights), name, estimator_class=PyTorchRobustMasking,
                           **(wrapper_kwargs or {}), **masking)
