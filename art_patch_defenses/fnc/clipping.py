"""Feature norm clipping (FNC): the layer, its insertion into CNNs, and BatchNorm re-estimation.

Reference: C. Yu, J. Chen, Y. Xue, Y. Liu, W. Wan, J. Bao, H. Ma, "Defending against Universal Adversarial
Patches by Clipping Feature Norms", ICCV 2021, https://openaccess.thecvf.com/content/ICCV2021/html/
Yu_Defending_Against_Universal_Adversarial_Patches_by_Clipping_Feature_Norms_ICCV_2021_paper.html

Threat model: a universal adversarial patch (empirical defence, no certificate). Universal patches produce
feature vectors of very large norm at the patch location; FNC clips each position's channel vector to
``alpha`` times the sample's mean feature norm at that layer (eq. 12), after every cascaded module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from art_patch_defenses.models.training import normalise, random_crop_flip
from art_patch_defenses.validation import check_images

#: Zero-norm guard: positions whose feature vector is (numerically) zero are left as they are.
NORM_EPS = 1e-12


def _cascaded_module_types() -> tuple[type[nn.Module], ...]:
    """Residual blocks, inverted residuals and inception modules of the supported architectures."""
    from torchvision.models import inception, mobilenetv2, resnet

    from art_patch_defenses.models.cifar_resnet import BasicBlock as CifarBasicBlock

    return (
        CifarBasicBlock,
        resnet.BasicBlock,
        resnet.Bottleneck,
        mobilenetv2.InvertedResidual,
        inception.InceptionA,
        inception.InceptionB,
        inception.InceptionC,
        inception.InceptionD,
        inception.InceptionE,
    )


def clipping_scale(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """The factor ``min(1, alpha * mean_hw ||f|| / ||f_ij||)`` of eq. 12, shape ``(N, 1, H, W)``.

    The channel norm is ``sqrt(sum f^2)`` rather than ``torch.linalg.vector_norm(dim=1)``, whose strided
    reduction over channels is slower on CPU. Zero vectors get the factor 1 (they stay zero).
    """
    # Clamping before the square root keeps the gradient finite at zero vectors.
    norms = torch.square(features).sum(dim=1, keepdim=True).clamp_min(NORM_EPS**2).sqrt()
    threshold = alpha * norms.mean(dim=(2, 3), keepdim=True)
    return torch.clamp(threshold / norms, max=1.0)


class FeatureNormClipping(nn.Module):
    """Eq. 12 of the paper: ``g_ij = f_ij / ||f_ij|| * min(||f_ij||, alpha * mean_hw ||f||)``.

    Per sample and per spatial position, on ``(N, C, H, W)`` feature maps; the mean is over the sample's own
    positions, never over the batch. Differentiable (eq. 13), no parameters. ``alpha = inf`` is the identity.
    """

    def __init__(self, alpha: float = 1.2) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be positive (inf disables clipping), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4:
            raise ValueError(f"FeatureNormClipping expects (N, C, H, W) features, got shape {tuple(features.shape)}")
        if math.isinf(self.alpha):
            return features
        return features * clipping_scale(features, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def _clip_block_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: apply the FNC layer attached to the block as ``module.fnc`` to the block's output.

    Without autograd (inference, ART's ``predict``) the block's fresh output is scaled in place, which saves
    allocating a second feature map per block; an output that aliases an input is never modified.
    """
    layer = module.fnc
    if math.isinf(layer.alpha):
        return output
    if torch.is_grad_enabled() and output.requires_grad:
        return layer(output)
    if any(isinstance(i, torch.Tensor) and i.data_ptr() == output.data_ptr() for i in inputs):
        return layer(output)
    return output.mul_(clipping_scale(output, layer.alpha))


def cascaded_modules(model: nn.Module) -> list[str]:
    """Names of the cascaded modules (residual / inverted-residual / inception blocks), in forward order.

    Auxiliary classifier heads (torchvision Inception's ``AuxLogits``) are not part of the cascade.
    """
    types = _cascaded_module_types()
    return [name for name, m in model.named_modules() if isinstance(m, types) and not name.startswith("AuxLogits")]


def spread_evenly(n_blocks: int, n_fnc: int) -> list[int]:
    """Indices of ``n_fnc`` of ``n_blocks`` blocks: the last one always, the others evenly spaced before it.

    This is the placement of the paper's ablation (Fig. 7b: "we keep the last residual block clipped and
    other FNC layers uniformly inserted").
    """
    if not 1 <= n_fnc <= n_blocks:
        raise ValueError(f"n_fnc must be in [1, {n_blocks}], got {n_fnc}")
    return sorted({n_blocks - 1 - round(k * n_blocks / n_fnc) for k in range(n_fnc)})


def layer_alphas(alpha: float | Sequence[float], count: int) -> list[float]:
    """One clipping parameter per FNC layer: ``alpha`` for all ``count`` layers, or a sequence of exactly ``count``
    values (one per clipped module, in forward order), each positive (inf disables that layer)."""
    if isinstance(alpha, (str, bytes)) or not isinstance(alpha, Sequence | np.ndarray):
        return [FeatureNormClipping(alpha).alpha] * count
    if len(alpha) != count:
        raise ValueError(f"alpha has {len(alpha)} values for {count} FNC layers: give one per layer or one number")
    return [FeatureNormClipping(value).alpha for value in alpha]


def insert_fnc(
    model: nn.Module,
    alpha: float | Sequence[float] = 1.2,
    n_fnc: int | None = None,
    insertion_points: Sequence[str] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with an FNC layer after each chosen module; ``model`` is left untouched.

    :param alpha: clipping parameter (paper: 1.0-1.1 on ImageNet, 1.2 on CIFAR-10), or one per chosen module in
        module order, which is forward order for the supported CNNs (e.g. looser clipping in the early blocks,
        where it costs clean accuracy).
    :param n_fnc: clip only this many of the cascaded modules (the last, and the rest evenly spaced);
        default: all of them.
    :param insertion_points: module names (as in ``model.named_modules()``) to clip after, for models whose
        blocks are not found by type; overrides the automatic search.
    :raises ValueError: if no insertion point is found or a named one does not exist.

    The FNC layer is attached as a child ``fnc`` of each chosen module and applied by a forward hook, so the
    state dict (and every checkpoint) of the model is unchanged.
    """
    clipped = copy.deepcopy(model)
    modules = dict(clipped.named_modules())
    position = {name: index for index, name in enumerate(modules)}
    # Per-layer alphas follow module order, as set_alpha and fnc_layers do, whatever order insertion_points name.
    names = sorted(chosen_modules(clipped, n_fnc, insertion_points), key=position.__getitem__)
    for name, value in zip(names, layer_alphas(alpha, len(names)), strict=True):
        module = modules[name]
        if hasattr(module, "fnc"):
            raise ValueError(f"module {name!r} already has an FNC layer")
        module.fnc = FeatureNormClipping(value)
        module.register_forward_hook(_clip_block_output)
    return clipped


def chosen_modules(
    model: nn.Module, n_fnc: int | None = None, insertion_points: Sequence[str] | None = None
) -> list[str]:
    """Names of the modules :func:`insert_fnc` clips after for these settings, in forward order.

    :raises ValueError: if no insertion point is found, a named one does not exist, or ``n_fnc`` is out of range.
    """
    modules = dict(model.named_modules())
    if insertion_points is not None:
        names = list(insertion_points)
        unknown = [name for name in names if name not in modules or name == ""]
        if unknown:
            raise ValueError(f"insertion_points {unknown} are not modules of {type(model).__name__}")
    else:
        names = cascaded_modules(model)
        if not names:
            raise ValueError(
                f"no residual, inverted-residual or inception block found in {type(model).__name__}; "
                "pass insertion_points=[module names]"
            )
    if n_fnc is not None:
        names = [names[i] for i in spread_evenly(len(names), n_fnc)]
    return names


def clipped_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that carry an FNC layer (attached by :func:`insert_fnc`)."""
    return [name for name, m in model.named_modules() if isinstance(getattr(m, "fnc", None), FeatureNormClipping)]


def fnc_layers(model: nn.Module) -> list[FeatureNormClipping]:
    """The FNC layers of a model, in module order."""
    return [m for m in model.modules() if isinstance(m, FeatureNormClipping)]


def set_alpha(model: nn.Module, alpha: float | Sequence[float]) -> None:
    """Change the clipping parameter of every FNC layer of ``model`` in place (one number, or one per layer in
    module order)."""
    layers = fnc_layers(model)
    if not layers:
        raise ValueError("the model has no FNC layer")
    for layer, value in zip(layers, layer_alphas(alpha, len(layers)), strict=True):
        layer.alpha = value


def recalibrate_batchnorm(
    model: nn.Module,
    x: np.ndarray,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 256,
    augment: bool = True,
    seed: int = 0,
    verbose: bool = True,
    channels_first: bool = True,
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics with one pass over ``x`` (the paper's step after
    inserting FNC). Statistics are the exact average over the pass (``momentum=None``). Returns ``model`` in
    eval mode; its weights are not changed.

    :param x: training images in [0, 1], in the layout ``model`` takes: NCHW, or NHWC with
        ``channels_first=False``.
    :param mean: normalisation the model expects (as the estimator's ``preprocessing``), if any, per channel.
    :param augment: pass the images through the training augmentation (random crop with 4-pixel padding, flip)
        the CIFAR models were trained with: statistics of un-augmented images do not match the ones the weights
        were trained against, and re-estimating on them costs held-out accuracy (measured in ``docs/fnc.md``).
    :param channels_first: the layout of ``x`` and of the model's input.
    :raises ValueError: if ``x`` is not a non-empty batch of images in [0, 1] in that layout (one whose channel
        axis does not match the model's first convolution is reported as the other layout).
    """
    check_images(x, "x", channels_first=channels_first)
    _check_layout_against_stem(model, x, channels_first)
    return _recalibrate(model, x, mean, std, batch_size, augment, seed, verbose, channels_first)


def _check_layout_against_stem(model: nn.Module, x: np.ndarray, channels_first: bool) -> None:
    """Name the layout when ``x``'s channel axis disagrees with the first convolution and the other axis fits."""
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is None:
        return
    axis, other = (1, 3) if channels_first else (3, 1)
    if x.shape[axis] != stem.in_channels and x.shape[other] == stem.in_channels:
        looks, expected = ("NHWC", "NCHW") if channels_first else ("NCHW", "NHWC")
        raise ValueError(
            f"x has shape {x.shape}, which looks {looks}; the model's first convolution takes {stem.in_channels} "
            f"channels and channels_first={channels_first} means {expected}: transpose x or set channels_first"
        )


@torch.no_grad()
def _recalibrate(
    model: nn.Module, x: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None, batch_size: int,
    augment: bool, seed: int, verbose: bool, channels_first: bool,
) -> nn.Module:
    """:func:`recalibrate_batchnorm` on checked inputs."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    model.train()
    generator = torch.Generator().manual_seed(seed)
    try:
        for start in tqdm(range(0, len(x), batch_size), desc="BatchNorm re-estimation", disable=not verbose):
            batch = torch.from_numpy(np.asarray(x[start : start + batch_size], dtype=np.float32))
            # Augmentation and normalisation work on NCHW; the model gets its own layout back.
            if not channels_first:
                batch = batch.permute(0, 3, 1, 2)
            if augment:
                batch = random_crop_flip(batch, generator=generator)
            batch = batch.to(device)
            if mean is not None and std is not None:
                batch = normalise(batch, tuple(mean), tuple(std))
            if not channels_first:
                batch = batch.permute(0, 2, 3, 1).contiguous()
            model(batch)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return model
