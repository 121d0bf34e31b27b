"""Feature norm clipping (FNC; Yu et al., ICCV 2021): an empirical defence against universal patches.

- :class:`FeatureNormClipping`: the layer (eq. 12), per sample and per position, differentiable.
- :func:`insert_fnc`: a copy of a CNN with the layer after each cascaded module (or named modules).
- :func:`recalibrate_batchnorm`: the paper's one-pass BatchNorm re-estimation after insertion.
- :class:`PyTorchFNCClassifier` / :func:`fnc_classifier`: the ART classifier; :func:`get_art_model`: the
  Armory-style factory.
- :func:`train_with_fnc`: fine-tuning through the clipped forward pass (``python -m art_patch_defenses.fnc.train``,
  weights tag ``"fnc"``).
"""

from art_patch_defenses.fnc import registration  # noqa: F401  (registers the weights tags)
from art_patch_defenses.fnc.classifier import PyTorchFNCClassifier, fnc_classifier, get_art_model
from art_patch_defenses.fnc.clipping import (
    FeatureNormClipping,
    cascaded_modules,
    fnc_layers,
    insert_fnc,
    recalibrate_batchnorm,
    set_alpha,
    spread_evenly,
)
from art_patch_defenses.fnc.training import train_with_fnc, tuning_split

__all__ = [
    "FeatureNormClipping",
    "PyTorchFNCClassifier",
    "cascaded_modules",
    "fnc_classifier",
    "fnc_layers",
    "get_art_model",
    "insert_fnc",
    "recalibrate_batchnorm",
    "set_alpha",
    "spread_evenly",
    "train_with_fnc",
    "tuning_split",
]
