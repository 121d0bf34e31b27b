"""Robust masking (PatchGuard; Xiang et al., USENIX Security 2021): secure aggregation of local logits.

Certifies recovery: the prediction cannot be changed by one patch whose influence is confined to one
feature-space window. Backbones: Mask-DS (column bands) and a BagNet-style CNN (``models.bagnet``). Importing
the package registers its models (``cifar_bagnet``, ``mnist_bagnet``) and their weights tags (see ``registration``),
and accepts the ImageNet BagNets and Mask-DS of ``models.imagenet`` as backbones (see ``imagenet``).
"""

from art_patch_defenses.robust_masking import imagenet, registration  # noqa: F401  (registers the models and tags)
from art_patch_defenses.robust_masking.classifier import get_art_model
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
    "certify", "certify_reference", "clip_features", "get_art_model", "masked_evidence", "robust_predict"]
