"""PatchZero on ImageNet-size inputs: the paper's detector, a PSPNet with a ResNet-50 encoder, at full resolution.

Xu et al., "PatchZero: Defending against Adversarial Patch Attacks by Detecting and Zeroing the Patch", WACV 2023
(https://arxiv.org/abs/2207.01795), section 4: PSPNet, ResNet-50 backbone, threshold 0.5, ImageNet validation
images at 224x224 with 2% patches at random places (32x32 px:
:data:`~art_patch_defenses.models.imagenet.IMAGENET_PATCH_PIXELS`). Here the encoder keeps its ordinary stride-2
stem (output stride 8, a 28x28 map on 224x224 images), unlike the stride-1 stem of the CIFAR-size default, and
is untrained (``encoder_weights=None``: nothing is downloaded); load your trained detector with
:meth:`PatchZero.from_checkpoint` (``sha256=`` checks the file).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from art_patch_defenses.models.imagenet import IMAGENET_MEAN
from art_patch_defenses.patchzero.detector import build_detector
from art_patch_defenses.patchzero.preprocessor import PatchZero

#: The paper's pyramid-pooling width (segmentation-models-pytorch's PSPNet default).
IMAGENET_PSP_CHANNELS = 512


def imagenet_detector(encoder_name: str = "resnet50", psp_out_channels: int = IMAGENET_PSP_CHANNELS) -> nn.Module:
    """An untrained ImageNet-size PatchZero detector: PSPNet, ``encoder_name`` encoder, stride-2 stem."""
    return build_detector(encoder_name, psp_out_channels=psp_out_channels, stride_one_stem=False)


def imagenet_patchzero(detector: nn.Module | None = None, **kwargs: Any) -> PatchZero:
    """A :class:`PatchZero` preprocessor for ImageNet images: ``detector`` (default: an untrained
    :func:`imagenet_detector`) repainting with ImageNet's mean pixel; ``kwargs`` go to :class:`PatchZero`."""
    kwargs.setdefault("fill_value", IMAGENET_MEAN)
    return PatchZero(imagenet_detector() if detector is None else detector, **kwargs)
