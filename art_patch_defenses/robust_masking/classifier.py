"""Building a :class:`PyTorchRobustMasking` from a registered backbone, and its Armory-style model factory."""

from __future__ import annotations

from art_patch_defenses.models.registry import wrap_registered_model
from art_patch_defenses.robust_masking.estimator import PyTorchRobustMasking

#: Registered models that are robust-masking backbones (local logits); :func:`register_backbones` extends it.
BACKBONE_MODELS: list[str] = ["cifar_mask_ds", "cifar_mask_ds_crop", "cifar_mask_ds_crop56", "cifar_bagnet",
                                 "mnist_bagnet"]
_MASKING_KEYS = ("patch_size", "threshold", "feature_clip", "feature_type")


def register_backbones(*names: str) -> None:
    """Let :func:`get_art_model` build these registered models (each must return local logits); idempotent."""
    BACKBONE_MODELS.extend(name for name in names if name not in BACKBONE_MODELS)


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                  weights_path: str | None = None) -> PyTorchRobustMasking:
    """Armory-style factory: a registered backbone wrapped as :class:`PyTorchRobustMasking`.

    ``model_kwargs``: ``name`` (one of :data:`BACKBONE_MODELS`), ``weights`` (a tag or a file) and the masking
    settings ``patch_size`` (pixels), ``threshold``, ``feature_clip``, ``feature_type``; ``wrapper_kwargs`` go to
    :func:`art_patch_defenses.models.make_classifier` (e.g. ``device_type``).
    """
    model_kwargs = dict(model_kwargs)
    if model_kwargs.get("name") not in BACKBONE_MODELS:
        raise ValueError(f"model_kwargs 'name' must be a robust-masking backbone, one of "
                         f"{', '.join(BACKBONE_MODELS)}; got {model_kwargs.get('name')!r}")
    if "feature_clip" in model_kwargs:
        model_kwargs["feature_clip"] = tuple(float(v) for v in model_kwargs["feature_clip"])
    return wrap_registered_model(model_kwargs, wrapper_kwargs, weights_path, PyTorchRobustMasking, _MASKING_KEYS)
