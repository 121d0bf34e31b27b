"""Mask-guided randomized smoothing (MRS; Zhang et al., Sci China Inf Sci 2022): a certifier with an L2 radius.

Gaussian noise only inside the patch region gives a certified L2 radius for changes of those pixels (Theorem 1);
the region is given or found by joint-voting localisation (section 3.2). Radii are in [0, 1] pixel units
(``from_255`` converts the paper's 0-255 figures).
"""

from art_patch_defenses.mrs import registration  # noqa: F401  (registers the weights tags)
from art_patch_defenses.mrs.classifier import get_art_model
from art_patch_defenses.mrs.estimator import MRSMixin, PyTorchMRS
from art_patch_defenses.mrs.localization import Localization, localize
from art_patch_defenses.mrs.smoothing import certified_radius, from_255, lower_confidence_bound, masked_noise
from art_patch_defenses.mrs.training import masked_noise_augmentation, train_mrs_base

__all__ = [
    "Localization", "MRSMixin", "PyTorchMRS", "certified_radius", "from_255", "get_art_model", "localize",
    "lower_confidence_bound", "masked_noise", "masked_noise_augmentation", "train_mrs_base",
]
