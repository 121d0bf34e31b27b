"""MRS's weights tags in the model registry (run when the package is imported): ``"mrs"`` for ``cifar_resnet20`` /
``cifar_resnet56``, ``checkpoints/cifar10_resnet<depth>_mrs.pt`` (noise inside random squares, ``mrs.train``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from art_patch_defenses.models.registry import register_weights
from art_patch_defenses.paths import checkpoints_dir

TAG = "mrs"


def _cifar_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_mrs.pt"


def register() -> None:
    """Register the ``"mrs"`` tags."""
    for depth in (20, 56):
        register_weights(f"cifar_resnet{depth}", TAG, _cifar_resnet(depth))


register()
