"""ART's own patch certifier as a baseline: ``PyTorchDeRandomizedSmoothing`` (column ablation, Levine & Feizi,
NeurIPS 2020, https://arxiv.org/abs/2002.10733) around the band classifier of a :class:`ColumnBandNet`.

ART's column ablator encodes a pixel as ``(x, 1 - x)``, keeps columns ``j .. j + width - 1`` (wrapping around) and
zeroes the rest, which is exactly what :meth:`ColumnBandNet.ablate` does; so the ``base`` of our Mask-DS backbone is
a de-randomized-smoothing base classifier, and ART's thresholded column vote and its certificate can be compared
with robust masking on the same network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from art_patch_defenses.models.bagnet import ColumnBandNet
from art_patch_defenses.models.registry import build_model, get_spec


def get_art_derandomized_smoothing(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                                   weights_path: str | None = None):
    """Armory-style factory: ART's ``PyTorchDeRandomizedSmoothing`` (``algorithm="levine2020"``, column
    ablation) on the band classifier of a registered :class:`ColumnBandNet` (e.g. ``cifar_mask_ds``).

    ``model_kwargs``: ``name``, ``weights`` and ``threshold`` (the softmax threshold of a vote, 0.3 as in the
    paper's CIFAR-10 models); the ablation width is the band net's. ``wrapper_kwargs`` go to ART's constructor
    (e.g. ``device_type``). The input is raw [0, 1] pixels (the ablator builds the encoding).
    """
    from art.estimators.certification.derandomized_smoothing import PyTorchDeRandomizedSmoothing

    model_kwargs = dict(model_kwargs)
    name = model_kwargs.pop("name", None)
    weights = weights_path or model_kwargs.pop("weights", None)
    threshold = float(model_kwargs.pop("threshold", 0.3))
    if model_kwargs:
        raise ValueError(f"unknown model_kwargs {sorted(model_kwargs)}; known: name, weights, threshold")
    band_net = build_model(name, weights) if name is not None else None
    if not isinstance(band_net, ColumnBandNet):
        raise ValueError(f"model_kwargs 'name' must name a column-band model (e.g. 'cifar_mask_ds'), got {name!r}")
    spec = get_spec(name)
    kwargs: dict[str, Any] = {"device_type": "cpu", **(wrapper_kwargs or {})}
    return PyTorchDeRandomizedSmoothing(
        model=band_net.base, loss=nn.CrossEntropyLoss(), input_shape=spec.input_shape, nb_classes=spec.nb_classes,
        ablation_size=band_net.band_width, algorithm="levine2020", ablation_type="column", threshold=threshold,
        logits=True, clip_values=(0.0, 1.0), verbose=False, **kwargs,
    )


def image_shape(estimator) -> tuple[int, ...]:
    """The shape of one input image of ART's ``PyTorchDeRandomizedSmoothing`` (with ``levine2020`` its
    ``input_shape`` is the doubled, ``(x, 1 - x)``-encoded one)."""
    channels, *hw = estimator.input_shape
    return (channels // 2, *hw) if estimator.algorithm == "levine2020" else tuple(estimator.input_shape)


def soft_vote_classifier(estimator):
    """A ``PyTorchClassifier`` on :class:`SoftColumnVote` of the base classifier of ART's column de-randomized
    smoothing ``estimator``: what white-box attacks on it differentiate."""
    from art_patch_defenses.models.registry import make_classifier

    if estimator.ablation_type != "column" or estimator.algorithm != "levine2020":
        raise ValueError("the soft vote is defined for column ablation with algorithm='levine2020'")
    shape = image_shape(estimator)
    band_net = ColumnBandNet(estimator.model, estimator.ablation_size[0], tuple(shape[-2:]))
    return make_classifier(SoftColumnVote(band_net), input_shape=shape, nb_classes=estimator.nb_classes)


class SoftColumnVote(nn.Module):
    """A differentiable stand-in for de-randomized smoothing's vote, for white-box attacks on it (BPDA-style):
    the log of the mean softmax of the band classifier over every column band. Its arg-max follows the soft
    vote, not the thresholded count that ART's ``predict`` takes, so attacks on it are judged by ``predict``."""

    def __init__(self, band_net: ColumnBandNet) -> None:
        super().__init__()
        self.band_net = band_net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        band_logits = self.band_net(x)  # (N, 1, W, C)
        return torch.log(torch.softmax(band_logits, dim=-1).mean(dim=(1, 2)) + 1e-12)
