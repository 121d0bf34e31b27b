"""Robust masking (PatchGuard; Xiang et al., USENIX Security 2021): secure aggregation of local logits.

Certifies recovery: the prediction cannot be changed by one patch whose influence is confined to one
feature-space window. Work in progress (issue 5): the algorithm and its provable analysis are here; the
small-receptive-field backbones, the ART estimator and training follow.
"""

from art_patch_defenses.robust_masking.masking import (
    certify,
    certify_reference,
    clip_features,
    masked_evidence,
    robust_predict,
)

__all__ = ["certify", "certify_reference", "clip_features", "masked_evidence", "robust_predict"]
