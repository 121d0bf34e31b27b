"""Robust masking's models and weights tags in the model registry (run when the package is imported).

- ``cifar_bagnet``: the BagNet-style CIFAR-10 backbone, tag ``"trained"`` (``robust_masking.train``);
- ``mnist_bagnet``: its MNIST version, tag ``"embedded"`` (an earlier ``robust_masking.train_embedded`` recipe);
- ``mnist_mask_ds``: Mask-DS for the embedded MNIST digits, tag ``"embedded"`` (``robust_masking.train_embedded``):
  :class:`~art_patch_defenses.models.bagnet.ColumnBandCNN` bands of :data:`MNIST_MASK_DS_BAND_WIDTH` columns,
  raw [0, 1] pixels in.

``cifar_mask_ds`` and its ``"trained"`` tag are registered by ``models/`` itself: ART's de-randomized-smoothing
baseline loads it too.
"""

from __future__ import annotations

import art_patch_defenses.robust_masking.classifier as classifier
from art_patch_defenses.models.bagnet import ColumnBandCNN
from art_patch_defenses.models.registry import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    ModelSpec,
    embedded_checkpoint,
    register_model,
)
from art_patch_defenses.paths import checkpoints_dir
from art_patch_defenses.robust_masking.backbones import build_backbone

#: File name part of the embedded MNIST BagNet: ``checkpoints/mnist_embedded_robust_masking_bagnet.pt``.
MNIST_BAGNET_CHECKPOINT = "robust_masking_bagnet"
#: File name part of the embedded MNIST Mask-DS: ``checkpoints/mnist_embedded_robust_masking_mask_ds.pt``.
MNIST_MASK_DS_CHECKPOINT = "robust_masking_mask_ds"
#: Band width and channel width of ``mnist_mask_ds`` (the committed recipe's, chosen on the training holdout).
MNIST_MASK_DS_BAND_WIDTH = 2
MNIST_MASK_DS_WIDTH = 32


def mnist_mask_ds(band_width: int = MNIST_MASK_DS_BAND_WIDTH, width: int = MNIST_MASK_DS_WIDTH) -> ColumnBandCNN:
    """An untrained ``mnist_mask_ds`` (other band widths: the ones ``train_embedded --band-width`` tries)."""
    return ColumnBandCNN(num_classes=10, in_channels=1, band_width=band_width, width=width)


def register() -> None:
    """Register robust masking's backbones (local logits ``(N, X, Y, C)``; wrap them with ``get_art_model``)."""
    register_model("cifar_bagnet", ModelSpec(
        factory=lambda: build_backbone("bagnet"), input_shape=(3, 32, 32), nb_classes=10, mean=CIFAR10_MEAN,
        std=CIFAR10_STD, weights={"trained": lambda: checkpoints_dir() / "cifar10_robust_masking_bagnet.pt"},
    ))
    register_model("mnist_bagnet", ModelSpec(
        factory=lambda: build_backbone("mnist_bagnet"), input_shape=(1, 32, 32), nb_classes=10, mean=MNIST_MEAN,
        std=MNIST_STD, weights={"embedded": lambda: embedded_checkpoint(MNIST_BAGNET_CHECKPOINT)},
    ))
    # Raw [0, 1] pixels: the bands build their (x, 1 - x) encoding themselves, as cifar_mask_ds does.
    register_model("mnist_mask_ds", ModelSpec(
        factory=mnist_mask_ds, input_shape=(1, 32, 32), nb_classes=10, mean=(0.0,), std=(1.0,),
        weights={"embedded": lambda: embedded_checkpoint(MNIST_MASK_DS_CHECKPOINT)},
    ))
    classifier.register_backbones("mnist_mask_ds")


register()
