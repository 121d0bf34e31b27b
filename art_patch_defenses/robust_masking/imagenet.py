"""Robust masking on ImageNet-size inputs: the ImageNet local-logit models of :mod:`art_patch_defenses.models.imagenet`
(BagNet-9 / -17 / -33, Mask-DS with a ResNet-50 or ResNet-18 base) become backbones ``get_art_model`` accepts.

PatchGuard (Xiang et al., USENIX Security 2021, https://arxiv.org/abs/2005.10884) on ImageNet: BagNet-17 (receptive
field 17 px, stride 8, a 26x26 map on 224x224 images) and Mask-DS (25-column bands), patches of 1% / 2% / 3% of
the image (23, 32, 39 px; :data:`~art_patch_defenses.models.imagenet.IMAGENET_PATCH_PIXELS`). A 32-pixel patch
meets a 6x6 window of BagNet-17 local logits and 56 of Mask-DS's 224 bands.
"""

from __future__ import annotations

import art_patch_defenses.robust_masking.classifier as classifier
from art_patch_defenses.models.imagenet import LOCAL_LOGIT_MODELS


def register() -> None:
    """Let ``robust_masking.get_art_model`` build the ImageNet local-logit models (idempotent)."""
    classifier.register_backbones(*LOCAL_LOGIT_MODELS)


register()
