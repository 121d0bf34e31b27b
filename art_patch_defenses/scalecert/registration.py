"""ScaleCert's weights tags in the model registry (run when the package is imported): ``"scalecert"`` for

- ``cifar_resnet20`` / ``cifar_resnet56``: ``checkpoints/cifar10_resnet<depth>_scalecert.pt`` (``scalecert.train``);
- ``mnist_cnn``: ``checkpoints/mnist_embedded_mnist_cnn_scalecert.pt`` (an earlier ``scalecert.train_embedded``
  recipe);

and its own model ``mnist_scalecert_cnn`` (the embedded MNIST CNN's architecture), tag ``"embedded"``:
``checkpoints/mnist_embedded_scalecert_cnn.pt`` (``scalecert.train_embedded``), the default scenario's.
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

TAG = "scalecert"
#: File name part of the embedded MNIST model: ``checkpoints/mnist_embedded_mnist_cnn_scalecert.pt``.
MNIST_CHECKPOINT = "mnist_cnn_scalecert"
#: The default scenario's model and its file part: ``checkpoints/mnist_embedded_scalecert_cnn.pt``.
MNIST_MODEL = "mnist_scalecert_cnn"
MNIST_MODEL_CHECKPOINT = "scalecert_cnn"


def _cifar_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_scalecert.pt"


def register() -> None:
    """Register the ``"scalecert"`` tags and ``mnist_scalecert_cnn``."""
    for depth in (20, 56):
        register_weights(f"cifar_resnet{depth}", TAG, _cifar_resnet(depth))
    register_weights("mnist_cnn", TAG, lambda: embedded_checkpoint(MNIST_CHECKPOINT))
    register_embedded_mnist_cnn(MNIST_MODEL, MNIST_MODEL_CHECKPOINT)


register()
