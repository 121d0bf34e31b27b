"""Patch attacks assembled from ART: universal patches, masked PGD, masked AutoPGD and the ensemble of them
(:class:`PatchAutoAttack`), with a gradient-free random search and placement scan.

Every attack runs against whatever ART estimator it is given, so a defended estimator is attacked white-box.
"""

from art_patch_defenses.attacks.ensemble import PatchAutoAttack, PatchBudget, placement_scan, random_search_patch
from art_patch_defenses.attacks.masked import MaskedAutoPGD, RestrictToMask, masked_pgd, masked_pgd_surrogate
from art_patch_defenses.attacks.universal import adversarial_patch, lavan_patch

__all__ = ["MaskedAutoPGD", "PatchAutoAttack", "PatchBudget", "RestrictToMask", "adversarial_patch", "lavan_patch",
           "masked_pgd", "masked_pgd_surrogate", "placement_scan", "random_search_patch"]
