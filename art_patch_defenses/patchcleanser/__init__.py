"""PatchCleanser (Xiang et al., USENIX Security 2022): certified recovery against one patch for any classifier.

Certifies recovery: for a certified image, no patch of the given size anywhere changes the double-masking
prediction. Every patch placement lies inside one mask of an R-covering mask set; double masking recovers the
label, and an image whose one- and two-mask predictions all agree with its label is certified.
"""

from art_patch_defenses.patchcleanser import registration  # noqa: F401  (registers the weights tags)
from art_patch_defenses.patchcleanser.classifier import get_art_model
from art_patch_defenses.patchcleanser.double_masking import certified_from_map, double_masking, double_masking_from_map
from art_patch_defenses.patchcleanser.estimator import PatchCleanserMixin, PyTorchPatchCleanser
from art_patch_defenses.patchcleanser.training import mask_augmentation, train_patchcleanser, worst_of_masks_loss

__all__ = [
    "PatchCleanserMixin", "PyTorchPatchCleanser", "certified_from_map", "double_masking", "double_masking_from_map",
    "get_art_model", "mask_augmentation", "train_patchcleanser", "worst_of_masks_loss"]
