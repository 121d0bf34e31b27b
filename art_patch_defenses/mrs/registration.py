"""MRS's models and weights tags in the model registry (run when the package is imported):

- ``"mrs"`` for ``cifar_resnet20`` / ``cifar_resnet56``: ``checkpoints/cifar10_resnet<depth>_mrs.pt`` (noise inside
  random squares, ``mrs.train``);
- its own model ``mnist_mrs_cnn`` (the embedded MNIST CNN's architecture), tag ``"embedded"``:
  ``checkpoints/mnist_embedded_mrs_cnn.pt`` (``mrs.train_embedded``), the default scenario's base classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from art_patch_defenses.models.registry import (
    register_embedded_mnist_cnn,
    register_weights,
)
from art_patch_defenses.paths import checkpoints_dir

TAG = "mrs"
#: The default scenario's base classifier and its file part: ``checkpoints/mnist_embedded_mrs_cnn.pt``.
MNIST_MODEL = "mnist_mrs_cnn"
MNIST_MODEL_CHECKPOINT = "mrs_cnn"


def _cifar_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_mrs.pt"


def register() -> None:
    """Register the ``"mrs"`` tags and ``mnist_mrs_cnn``."""
    for depth in (20, 56):
        register_weights(f"cifar_resnet{depth}", TAG, _cifar_resnet(depth))
    register_embedded_mnist_cnn(MNIST_MODEL, MNIST_MODEL_CHECKPOINT)


register()
