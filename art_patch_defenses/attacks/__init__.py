"""Patch attacks assembled from ART: universal patches, masked PGD and masked AutoPGD.

Every attack runs against whatever ART estimator it is given, so a defended estimator is attacked white-box.
"""

from art_patch_defenses.attacks.masked import MaskedAutoPGD, RestrictToMask, masked_pgd, masked_pgd_surrogate
from art_patch_defenses.attacks.universal import adversarial_patch, lavan_patch

__all__ = ["MaskedAutoPGD", "RestrictToMask", "adversarial_patch", "lavan_patch", "masked_pgd", "masked_pgd_surrogate"]
