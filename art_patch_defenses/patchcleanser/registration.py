"""PatchCleanser's weights tags in the model registry (run when the package is imported): ``"patchcleanser"`` for

- ``cifar_resnet20`` / ``cifar_resnet56``: ``checkpoints/cifar10_resnet<depth>_patchcleanser.pt``
  (``patchcleanser.train``);
- ``mnist_cnn``: ``checkpoints/mnist_embedded_mnist_cnn_patchcleanser.pt`` (an earlier
  ``patchcleanser.train_embedded`` recipe);

and its own model ``mnist_patchcleanser_cnn`` (the embedded MNIST CNN's architecture), tag ``"embedded"``:
``checkpoints/mnist_embedded_patchcleanser_cnn.pt`` (``patchcleanser.train_embedded``), the default scenario's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from art_patch_defenses.models.registry import (
    embedded_checkpoint,
    register_embedded_mnist_cnn,
    register_weights,
)
from art_patch_defenses.paths import checkpoints_dir

TAG = "patchcleanser"
#: File name part of the embedded MNIST model: ``checkpoints/mnist_embedded_mnist_cnn_patchcleanser.pt``.
MNIST_CHECKPOINT = "mnist_cnn_patchcleanser"
#: The default scenario's model and its file part: ``checkpoints/mnist_embedded_patchcleanser_cnn.pt``.
MNIST_MODEL = "mnist_patchcleanser_cnn"
MNIST_MODEL_CHECKPOINT = "patchcleanser_cnn"


def _cifar_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_patchcleanser.pt"


def register() -> None:
    """Register the ``"patchcleanser"`` tags and ``mnist_patchcleanser_cnn``."""
    for depth in (20, 56):
        register_weights(f"cifar_resnet{depth}", TAG, _cifar_resnet(depth))
    register_weights("mnist_cnn", TAG, lambda: embedded_checkpoint(MNIST_CHECKPOINT))
    register_embedded_mnist_cnn(MNIST_MODEL, MNIST_MODEL_CHECKPOINT)


register()
