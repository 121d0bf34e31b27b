"""ImageNet-size models (224x224 RGB, 1000 classes) in the registry, and the papers' ImageNet patch sizes.

Registered names (all built untrained: nothing is downloaded; torchvision models get ``weights=None``):

- ``imagenet_resnet18``, ``imagenet_resnet50``, ``imagenet_mobilenet_v2``, ``imagenet_vit_b_16``: torchvision
  classifiers (FNC, PatchZero's downstream model, PatchCleanser, MRS, ScaleCert's SIN on ResNet-50);
- ``imagenet_bagnet9``, ``imagenet_bagnet17``, ``imagenet_bagnet33``: BagNets returning local logits
  (:mod:`.imagenet_bagnet`), robust masking's ImageNet backbone (BagNet-17 in PatchGuard);
- ``imagenet_mask_ds`` (ResNet-50 base) and ``imagenet_mask_ds_resnet18``: de-randomized-smoothing column bands
  of :data:`DS_BAND_WIDTH` columns (Levine & Feizi's ImageNet band), raw [0, 1] pixels in, local logits
  ``(N, 1, 224, 1000)``, the base run over the 224 ablated copies in chunks (:class:`ChunkedColumnBandNet`).

Your own weights: every one of these takes a weights *file* (a plain state dict, or a dict with a
``state_dict`` entry; ``DataParallel``'s ``module.`` prefix is removed), loaded key for key with
``weights_only=True`` and its sha256 checked when given::

    build_model("imagenet_resnet50", "/data/weights/resnet50.pth", sha256="<64 hex digits>")
    get_art_model({"name": "imagenet_resnet50", "weights_sha256": "<64 hex digits>"},
                  weights_path="/data/weights/resnet50.pth")

and in a config ``model.weights_file`` (or ``model_kwargs.weights``) with ``model_kwargs.weights_sha256``.
torchvision's own published state dicts have the torchvision models' keys, so a file downloaded from torchvision
loads into the ``imagenet_<torchvision name>`` models as it is. Normalisation is ImageNet's mean and std (ART
``preprocessing``), except for the Mask-DS models, which encode raw pixels themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from art_patch_defenses.models.bagnet import ColumnBandNet, ds_base_from
from art_patch_defenses.models.imagenet_bagnet import BAGNET_KERNEL3, imagenet_bagnet
from art_patch_defenses.models.registry import ModelSpec, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SHAPE = (3, 224, 224)
IMAGENET_CLASSES = 1000
#: Column-band width of de-randomized smoothing on ImageNet (Levine & Feizi, NeurIPS 2020: 25 columns).
DS_BAND_WIDTH = 25
#: Copies of a Mask-DS image the base network classifies at once (memory: 64 x 6 x 224 x 224 floats = 77 MB).
DS_CHUNK = 64
#: torchvision classifiers registered as ``imagenet_<name>``.
TORCHVISION_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vit_b_16")


def paper_patch_side(fraction: float, image_hw: tuple[int, int] = IMAGENET_SHAPE[1:]) -> int:
    """Side in pixels of a square patch covering ``fraction`` of the image, rounded *up* as the ImageNet papers do
    (PatchCleanser and PatchGuard: 1% = 23x23, 2% = 32x32, 3% = 39x39 on 224x224 images), so the patch covers
    at least the stated fraction. :func:`art_patch_defenses.geometry.patch_shape` rounds to the nearest pixel
    instead (22 for 1%)."""
    if not isinstance(fraction, float) or not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be a float in (0, 1), got {fraction!r}")
    return min(min(image_hw), math.ceil(math.sqrt(fraction * image_hw[0] * image_hw[1]) - 1e-9))


#: The papers' ImageNet patch sides (224x224 images), in pixels, per defence: certified recovery at 2% (and 1%)
#: of the image (PatchCleanser, PatchGuard's robust masking), ScaleCert's headline 1% (it also reports 2% and
#: 3%), PatchZero's 2% random-place patches, FNC's 5% universal patch; MRS states no ImageNet patch size, so it
#: takes the certified-recovery 2%.
IMAGENET_PATCH_PIXELS: dict[str, int] = {
    "patchcleanser": paper_patch_side(0.02),
    "patchcleanser_1pct": paper_patch_side(0.01),
    "robust_masking": paper_patch_side(0.02),
    "robust_masking_1pct": paper_patch_side(0.01),
    "scalecert": paper_patch_side(0.01),
    "patchzero": paper_patch_side(0.02),
    "fnc": paper_patch_side(0.05),
    "mrs": paper_patch_side(0.02),
}


class ChunkedColumnBandNet(ColumnBandNet):
    """:class:`~art_patch_defenses.models.bagnet.ColumnBandNet` that classifies its ablated copies ``chunk`` at a
    time: the same local logits ``(N, 1, W, C)`` (and gradient), without holding all ``N x W`` full-size copies
    and their activations at once (224 copies of a 224x224 image per image on ImageNet)."""

    def __init__(self, base: nn.Module, band_width: int = DS_BAND_WIDTH, image_hw: tuple[int, int] = (224, 224),
                 chunk: int = DS_CHUNK) -> None:
        super().__init__(base, band_width, image_hw)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = self.keep.shape[0]
        logits = []
        if self.chunk >= bands:  # whole images, as many as a chunk holds
            per_chunk = self.chunk // bands
            for start in range(0, len(x), per_chunk):
                logits.append(self.base(self.ablate(x[start : start + per_chunk])))
        else:  # image by image, bands in order: the same image-major order as ablate(x)
            for n in range(len(x)):
                for start in range(0, bands, self.chunk):
                    selected = torch.arange(start, min(start + self.chunk, bands), device=x.device)
                    logits.append(self.base(self.ablate(x[n : n + 1], selected)))
        return torch.cat(logits).view(len(x), 1, bands, -1)


def torchvision_classifier(name: str, num_classes: int = IMAGENET_CLASSES) -> nn.Module:
    """An untrained torchvision classifier ``name`` (``weights=None``: nothing is downloaded)."""
    import torchvision

    if name not in TORCHVISION_MODELS:
        raise ValueError(f"unknown torchvision model {name!r}; registered: {', '.join(TORCHVISION_MODELS)}")
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def imagenet_mask_ds(base: str = "resnet50", band_width: int = DS_BAND_WIDTH, chunk: int = DS_CHUNK
                     ) -> ChunkedColumnBandNet:
    """An untrained ImageNet Mask-DS: column bands of ``band_width`` around a torchvision ResNet whose stem takes
    the ``(x, 1 - x)`` band encoding (:func:`~art_patch_defenses.models.bagnet.ds_base_from`)."""
    if not base.startswith("resnet"):
        raise ValueError(f"base must be a torchvision ResNet (its stem is conv1), got {base!r}")
    return ChunkedColumnBandNet(ds_base_from(torchvision_classifier(base), IMAGENET_MEAN, IMAGENET_STD),
                                band_width, IMAGENET_SHAPE[1:], chunk)


def _spec(factory: Callable[[], nn.Module], raw_pixels: bool = False) -> ModelSpec:
    mean, std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if raw_pixels else (IMAGENET_MEAN, IMAGENET_STD)
    return ModelSpec(factory=factory, input_shape=IMAGENET_SHAPE, nb_classes=IMAGENET_CLASSES, mean=mean, std=std)


def register() -> None:
    """Register the ImageNet models (no weights tags: weights are the user's files)."""
    for name in TORCHVISION_MODELS:
        register_model(f"imagenet_{name}", _spec(lambda name=name: torchvision_classifier(name)))
    for variant in BAGNET_KERNEL3:
        register_model(f"imagenet_bagnet{variant}", _spec(lambda variant=variant: imagenet_bagnet(variant)))
    register_model("imagenet_mask_ds", _spec(imagenet_mask_ds, raw_pixels=True))
    register_model("imagenet_mask_ds_resnet18", _spec(lambda: imagenet_mask_ds("resnet18"), raw_pixels=True))


#: Names this module registers (robust masking accepts the local-logit ones as backbones).
LOCAL_LOGIT_MODELS = (*(f"imagenet_bagnet{v}" for v in BAGNET_KERNEL3), "imagenet_mask_ds", "imagenet_mask_ds_resnet18")

register()
