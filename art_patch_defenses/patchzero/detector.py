"""The PatchZero patch detector: a segmentation-models-pytorch PSPNet sized for small images on a CPU.

The paper uses PSPNet with a ResNet-50 backbone on ImageNet-sized inputs. For 32x32 CIFAR images the default
here is a ResNet-18 encoder truncated to depth 3 with a stride-1 stem (overall output stride 4, an 8x8
feature map on CIFAR), so a 7x7 patch spans about two feature cells; the encoder stages beyond the depth are
removed so the checkpoint stays small. Nothing is downloaded: ``encoder_weights=None``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: Input sides must be multiples of this (PSPNet's pyramid pooling on the depth-3 feature map).
SIZE_MULTIPLE = 8
#: Weight of PSPNet's auxiliary loss (image-level "is there a patch"), as in the PSPNet paper.
AUX_LOSS_WEIGHT = 0.4


def build_detector(
    encoder_name: str = "resnet18", psp_out_channels: int = 64, in_channels: int = 3, stride_one_stem: bool = True
) -> nn.Module:
    """A PSPNet (one output channel: logit of "this pixel is adversarial") with an auxiliary image head.

    :param encoder_name: a ResNet encoder of segmentation-models-pytorch (``resnet18``, ``resnet34``, ...).
    :param psp_out_channels: width of the pyramid-pooling output.
    :param stride_one_stem: make the stem's convolution stride 1 (output stride 4 instead of 8) for 32x32 inputs.
    """
    import segmentation_models_pytorch as smp

    if not encoder_name.startswith("resnet"):
        raise ValueError(f"encoder_name must be a ResNet encoder of segmentation-models-pytorch, got {encoder_name!r}")
    detector = smp.PSPNet(
        encoder_name=encoder_name, encoder_weights=None, encoder_depth=3, psp_out_channels=psp_out_channels,
        in_channels=in_channels, classes=1, upsampling=4 if stride_one_stem else 8,
        aux_params={"classes": 1, "dropout": 0.0},
    )
    # Depth 3 uses the stem, layer1 and layer2 only; drop the rest so the checkpoint holds only what runs.
    del detector.encoder.layer3, detector.encoder.layer4
    if stride_one_stem:
        detector.encoder.conv1.stride = (1, 1)
    return detector


def detector_logits(detector: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel logits ``(N, 1, H, W)`` and image-level logits ``(N, 1)`` for inputs of any size.

    Inputs whose sides are not multiples of :data:`SIZE_MULTIPLE` are padded (replicating the border) and the
    pixel logits are cropped back, so no input size is rejected.
    """
    height, width = x.shape[-2:]
    pad_h = (-height) % SIZE_MULTIPLE
    pad_w = (-width) % SIZE_MULTIPLE
    if pad_h or pad_w:
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    pixel_logits, image_logits = detector(x)
    return pixel_logits[..., :height, :width], image_logits


def detector_loss(detector: nn.Module, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """PSPNet's training loss for patch masks: pixel-wise binary cross-entropy plus the auxiliary image term.

    :param x: images in [0, 1], NCHW.
    :param masks: ``(N, H, W)`` with 1 on patch pixels.
    """
    pixel_logits, image_logits = detector_logits(detector, x)
    masks = masks.float()
    main = nn.functional.binary_cross_entropy_with_logits(pixel_logits[:, 0], masks)
    has_patch = masks.flatten(1).amax(1, keepdim=True)
    aux = nn.functional.binary_cross_entropy_with_logits(image_logits, has_patch)
    return main + AUX_LOSS_WEIGHT * aux


def load_detector(path: str | Path, sha256: str | None = None) -> nn.Module:
    """Build a detector from a checkpoint written by the PatchZero trainer (its settings are stored in it)."""
    from art_patch_defenses.models.checkpoints import load_weights

    settings = detector_settings(path)
    return load_weights(build_detector(**settings), path, sha256).eval()


def detector_settings(path: str | Path) -> dict:
    """The ``build_detector`` keyword arguments stored in a detector checkpoint."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    settings = content.get("detector", {}) if isinstance(content, dict) else {}
    known = {"encoder_name", "psp_out_channels", "in_channels", "stride_one_stem"}
    return {key: value for key, value in settings.items() if key in known}
