"""Robust masking's models and weights tags in the model registry (run when the package is imported).

- ``cifar_bagnet``: the BagNet-style CIFAR-10 backbone, tag ``"trained"`` (``robust_masking.train``);
- ``mnist_bagnet``: its MNIST version, tag ``"embedded"`` (``robust_masking.train_embedded``).

``cifar_mask_ds`` and its ``"trained"`` tag are registered by ``models/`` itself: ART's de-randomized-smoothing
baseline loads it too.
"""

from __future__ import annotations

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


register()
