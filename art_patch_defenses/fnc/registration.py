"""FNC's weights tag in the model registry (run when the package is imported): ``"fnc"`` for ``cifar_resnet20`` /
``cifar_resnet56``, ``checkpoints/cifar10_resnet<depth>_fnc.pt`` (fine-tuned with FNC in place, ``fnc.train``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from art_patch_defenses.models.registry import register_weights
from art_patch_defenses.paths import checkpoints_dir

TAG = "fnc"


def _cifar_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_fnc.pt"


def register() -> None:
    """Register the ``"fnc"`` tags."""
    for depth in (20, 56):
        register_weights(f"cifar_resnet{depth}", TAG, _cifar_resnet(depth))


register()
