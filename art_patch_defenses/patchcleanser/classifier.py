"""Building a :class:`PyTorchPatchCleanser` around a registered model, and its Armory-style model factory."""

from __future__ import annotations

from art_patch_defenses.models.flip_average import FlipAverage
from art_patch_defenses.models.registry import wrap_registered_model
from art_patch_defenses.patchcleanser.estimator import PyTorchPatchCleanser

_PATCHCLEANSER_KEYS = ("patch_size", "masks_per_axis", "fill_value", "channels_last")


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                  weights_path: str | None = None) -> PyTorchPatchCleanser:
    """Armory-style factory: a registered classifier wrapped as :class:`PyTorchPatchCleanser`.

    ``model_kwargs``: ``name``, ``weights`` (``"patchcleanser"`` for the mask-fine-tuned models), the settings
    ``patch_size``, ``masks_per_axis``, ``fill_value``, ``channels_last``, and ``flip_average`` (True: the base
    classifier averages the model over each image and its mirror,
    :class:`~art_patch_defenses.models.flip_average.FlipAverage`; PatchCleanser certifies any base classifier);
    ``wrapper_kwargs`` go to ``make_classifier``.
    """
    return wrap_registered_model(model_kwargs, wrapper_kwargs, weights_path, PyTorchPatchCleanser,
                                 _PATCHCLEANSER_KEYS, model_wrappers={"flip_average": FlipAverage})
