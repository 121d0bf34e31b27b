"""PatchCleanser's weights tags in the model registry (run when the package is imported): ``"patchcleanser"`` for

- ``cifar_resnet20`` / ``cifar_resnet56``: ``checkpoints/cifar10_resnet<depth>_patchcleanser.pt``
  (``patchcleanser.train``);
- ``mnist_cnn``: ``checkpoints/mnist_embedded_mnist_cnn_patchcleanser.pt`` (``patchcleanser.train_embedded``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from art_patch_defenses.models.registry import embedded_checkpoint, register_weights
from art_patch_defenses.paths import checkpoints_dir

TAG = "patchcleanser"
#: File name part of the embedded MNIST model: ``checkpoints/mnist_embedded_mnist_cnn_patchcleanser.pt``.
MNIST_CHECKPOINT = "mnist_cnn_patchcleanser"


def _cifar_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_patchcleanser.pt"


def register() -> None:
    """Register the ``"patchcleanser"`` tags."""
    for depth in (20, 56):
        register_weights(f"cifar_resnet{depth}", TAG, _cifar_resnet(depth))
    register_weights("mnist_cnn", TAG, lambda: embedded_checkpoint(MNIST_CHECKPOINT))


register()
