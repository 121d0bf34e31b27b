"""Robust masking (PatchGuard; Xiang et al., USENIX Security 2021): secure aggregation of local logits.

Certifies recovery: the prediction cannot be changed by one patch whose influence is confined to one
feature-space window. Work in progress (issue 5): the algorithm, its provable analysis and the ART
estimator are here; the Mask-DS backbone, masked-feature training and the CIFAR-10 model follow.
"""

from art_patch_defenses.robust_masking.estimator import PyTorchRobustMasking, RobustMaskingHead, RobustMaskingMixin
from art_patch_defenses.robust_masking.masking import (
    certify,
    certify_reference,
    clip_features,
    masked_evidence,
    robust_predict,
)

__all__ = [
    "PyTorchRobustMasking",
    "RobustMaskingHead",
    "RobustMaskingMixin",
    "certify", "certify_reference", "clip_features", "masked_evidence", "robust_predict"]
