"""Fine-tuning with FNC in the forward pass, and the training-image split FNC's settings are chosen on.

The paper (section 3.3) only re-estimates BatchNorm statistics after inserting FNC, which hardly moves clean accuracy
on our CIFAR ResNets, so the clipping that gains most under a patch (alpha near 1) costs more clean accuracy than the
goal allows. :func:`train_with_fnc` trains every weight for a few epochs through the clipped forward pass so the
network adapts to it; FNC has no parameters and is attached by hooks, so the result is an ordinary state dict of the
architecture. It recovers the clean accuracy but also shrinks the patch gain (measured in ``docs/fnc.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from art_patch_defenses.data import balanced_subset
from art_patch_defenses.fnc.clipping import _check_layout_against_stem, cascaded_modules, insert_fnc
from art_patch_defenses.models.training import train_classifier
from art_patch_defenses.validation import check_images

#: Stages of the CIFAR ResNets: a per-stage alpha covers a third of the residual blocks.
STAGES = 3


def stage_alphas(text: str) -> list[float]:
    """``"a"`` (every block) or ``"a1,a2,a3"`` (one per stage; ``inf``: that stage is not clipped), each positive."""
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, STAGES) or not all(value > 0 for value in values):
        raise ValueError(f"give one positive alpha or {STAGES} (a1,a2,a3, one per stage; inf: no clipping), "
                         f"got {text!r}")
    return values


def per_block(alpha: Sequence[float], blocks: int) -> float | list[float]:
    """One alpha for every block, or each stage's alpha repeated over its share of ``blocks``."""
    if len(alpha) == 1:
        return alpha[0]
    if blocks % len(alpha):
        raise ValueError(f"{blocks} blocks do not split into {len(alpha)} stages")
    return [value for value in alpha for _ in range(blocks // len(alpha))]


def tuning_split(y: np.ndarray, patch_n: int = 1000, eval_n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training images FNC's settings are chosen on: the images universal patches are trained on
    (class-balanced, seed 1, as ``fnc_cifar10.py``'s) and ``eval_n`` other class-balanced ones (seed 2) they are
    evaluated on (``fnc_alpha_tuning.py``)."""
    patch_index = balanced_subset(y, patch_n, seed=1)
    rest = np.setdiff1d(np.arange(len(y)), patch_index)
    return patch_index, rest[balanced_subset(y[rest], eval_n, seed=2)]


def train_with_fnc(model: nn.Module, x: np.ndarray, y: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                   alpha: float | Sequence[float], **train_kwargs) -> nn.Module:
    """Fine-tune ``model`` (left untouched) with an FNC layer after every cascaded module (``alpha``: one value or
    one per block, as :func:`~art_patch_defenses.fnc.insert_fnc`) on clean images with cross-entropy; the other
    arguments are ``train_classifier``'s.

    :param x: training images, float32 NCHW in [0, 1].
    :return: the trained copy, with its FNC layers (in eval mode); its state dict is the architecture's.
    :raises ValueError: for images that are not a non-empty NCHW batch in [0, 1] without NaN (NHWC is named as
        such), or a model without blocks to clip after.
    """
    check_images(x, "x")
    _check_layout_against_stem(model, x, channels_first=True)
    if not cascaded_modules(model):
        raise ValueError(f"{type(model).__name__} has no block FNC can clip after")
    return train_classifier(insert_fnc(model, alpha), x, y, mean, std, **train_kwargs)
