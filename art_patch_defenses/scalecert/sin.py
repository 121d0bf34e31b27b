"""Superficial important neurons (SIN): winner-take-all sparsity after a superficial layer (ScaleCert, section 3.2).

The channel-summed activation of the superficial layer ranks its spatial positions; the top-k fraction (the
winners) pass on, every other position is zeroed. Features whose receptive field meets an occluded window are
*excluded*: they can never win (the paper sets them to the map's minimum). So occluding a window is, exactly,
excluding the features it can reach: the pixels under it reach no other feature, and the excluded ones are
zeroed whatever their value. A window outside the candidate region R therefore leaves every winner, and the
prediction, exactly as they were; that invariance is what makes ScaleCert's certificate sound, so the ranking is
deterministic (ties go to the lower position index).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from art_patch_defenses.models.flip_average import average_log_probabilities

#: Layer types whose kernel, stride and padding are composed into the superficial layer's receptive field.
_SPATIAL_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def number_of_winners(top_k: float, positions: int) -> int:
    """How many of ``positions`` spatial positions a top-``k`` fraction keeps (at least one)."""
    return max(1, min(positions, math.ceil(top_k * positions)))


class SuperficialImportantNeurons(nn.Module):
    """Keep the top-``k`` fraction of spatial positions of a ``(N, C, h, w)`` feature map, zero the rest.

    Ranking score: the sum over channels of the activation (its positive part, so the layer may be taken before
    or after its ReLU). Gradients reach only the winners (winner-take-all fine-tuning).
    """

    def __init__(self, top_k: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < top_k <= 1.0:
            raise ValueError(f"top_k must be a fraction in (0, 1], got {top_k}")
        self.top_k = top_k

    def winners(self, features: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean ``(N, h, w)`` of the winners; ``excluded`` ``(N, h, w)`` positions never win."""
        n, _, h, w = features.shape
        score = features.detach().clamp(min=0).sum(1).flatten(1)
        if excluded is not None:
            excluded = excluded.reshape(n, h * w).to(features.device)
            score = score.masked_fill(excluded, float("-inf"))
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        kept = torch.zeros_like(score, dtype=torch.bool)
        kept.scatter_(1, order[:, : number_of_winners(self.top_k, h * w)], True)
        if excluded is not None:
            kept &= ~excluded
        return kept.view(n, h, w)

    def forward(self, features: torch.Tensor, excluded: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        kept = self.winners(features, excluded)
        return features * kept.unsqueeze(1).to(features.dtype), kept

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}"


def trace_modules(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """``(name, module, output shape)`` of every named module in the order its forward pass finishes, for one
    zero input of ``input_shape`` (without the batch axis)."""
    trace: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    handles = [module.register_forward_hook(
        lambda m, inputs, output, name=name: trace.append((name, m, tuple(output.shape))))
        for name, module in model.named_modules() if name]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            parameter = next(model.parameters(), None)
            like = parameter if parameter is not None else torch.zeros(())
            model(torch.zeros((1, *input_shape), device=like.device, dtype=like.dtype))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return trace


def superficial_chain(model: nn.Module, layer: str, input_shape: tuple[int, ...]
                      ) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
    """The ``(kernel, stride, padding)`` of every convolution and pooling layer up to and including ``layer``,
    in the order a forward pass runs them, and the spatial size of ``layer``'s output.

    ``layer`` must be reached through a chain (a network's stem: conv, norm, activation, pooling); its receptive
    field is then the composition of these layers. Dilated, non-square or string-padded layers are refused.
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"superficial_layer {layer!r} is not a module of the model; modules: "
                         f"{', '.join(name for name in modules if name)}")
    chain = []
    for name, module, shape in trace_modules(model, input_shape):
        if isinstance(module, _SPATIAL_LAYERS):
            chain.append(_kernel_stride_padding(name, module))
        if name == layer:
            return chain, shape[-2:]
    raise ValueError(f"superficial_layer {layer!r} did not run in a forward pass")


def layer_after_first_convolution(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """Name of the module that finishes right after the model's first ``Conv2d`` (its norm or activation)."""
    trace = trace_modules(model, input_shape)
    for (_, module, _), (following, _, _) in zip(trace, trace[1:], strict=False):
        if isinstance(module, nn.Conv2d):
            return following
    raise ValueError("found no Conv2d followed by another module; name the superficial_layer explicitly")


def _kernel_stride_padding(name: str, module: nn.Module) -> tuple[int, int, int]:
    values = []
    for attribute in ("kernel_size", "stride", "padding"):
        value = getattr(module, attribute)
        if isinstance(value, str):
            raise ValueError(f"layer {name!r}: string padding {value!r} is not supported; give it in pixels")
        pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
        if pair[0] != pair[1]:
            raise ValueError(f"layer {name!r}: non-square {attribute} {pair} is not supported")
        values.append(int(pair[0]))
    dilation = getattr(module, "dilation", 1)
    if (tuple(dilation) if isinstance(dilation, (tuple, list)) else (dilation,)) not in ((1,), (1, 1)):
        raise ValueError(f"layer {name!r}: dilated layers are not supported")
    if getattr(module, "ceil_mode", False):
        raise ValueError(f"layer {name!r}: ceil_mode pooling is not supported")
    return values[0], values[1], values[2]


class ScaleCertNet(nn.Module):
    """``model`` with the SIN mask applied to the output of its ``superficial_layer`` (a forward hook).

    ``forward(x, excluded=None, superficial=None)``: ``excluded`` ``(N, h, w)`` marks the superficial features an
    occluded window reaches; they never win. ``superficial`` ``(N, C, h, w)``, if given, replaces the layer's output
    (the features of the unoccluded image, so that an occluded copy is computed from exactly the same numbers).
    After each forward ``last_features`` holds the layer's output before the SIN mask and ``last_winners`` the
    winners ``(N, h, w)``. The wrapped ``model``'s own state dict is unchanged (checkpoints stay plain models).

    ``flip_average``: score each image and its mirror (along the width) through the sparse model and average the
    log-softmax outputs (:func:`~art_patch_defenses.models.flip_average.average_log_probabilities`). ``excluded``,
    ``superficial``, ``last_features`` and ``last_winners`` then carry a view axis after the batch axis: index 0 the
    image, 1 its mirror, each in that view's own coordinates.
    """

    def __init__(self, model: nn.Module, superficial_layer: str, top_k: float, input_shape: tuple[int, ...],
                 flip_average: bool = False) -> None:
        super().__init__()
        self.model = model
        self.sin = SuperficialImportantNeurons(top_k)
        self.flip_average = flip_average
        self.superficial_layer = superficial_layer
        self.input_shape = tuple(input_shape)
        self.chain, self.map_hw = superficial_chain(model, superficial_layer, input_shape)
        self.last_features: torch.Tensor | None = None
        self.last_winners: torch.Tensor | None = None
        self._excluded: torch.Tensor | None = None
        self._superficial: torch.Tensor | None = None
        module = dict(model.named_modules())[superficial_layer]
        self._handle = module.register_forward_hook(self._apply_sin)

    def _apply_sin(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        features = output if self._superficial is None else self._superficial
        self.last_features = features.detach()
        sparse, self.last_winners = self.sin(features, self._excluded)
        return sparse

    def forward(self, x: torch.Tensor, excluded: torch.Tensor | None = None,
                superficial: torch.Tensor | None = None) -> torch.Tensor:
        if not self.flip_average:
            return self._sparse_forward(x, excluded, superficial)
        for name, value in (("excluded", excluded), ("superficial", superficial)):
            if value is not None and (value.dim() < 4 or value.shape[1] != 2):
                raise ValueError(f"with flip_average, {name} needs a view axis of 2 after the batch axis (the image, "
                                 f"its mirror), got shape {tuple(value.shape)}")
        logits, features, winners = [], [], []
        for view, image in enumerate((x, x.flip(3))):
            logits.append(self._sparse_forward(image, None if excluded is None else excluded[:, view],
                                               None if superficial is None else superficial[:, view]))
            features.append(self.last_features)
            winners.append(self.last_winners)
        self.last_features, self.last_winners = torch.stack(features, 1), torch.stack(winners, 1)
        return average_log_probabilities(logits)

    def _sparse_forward(self, x: torch.Tensor, excluded: torch.Tensor | None, superficial: torch.Tensor | None
                        ) -> torch.Tensor:
        self._excluded, self._superficial = excluded, superficial
        try:
            return self.model(x)
        finally:
            self._excluded = self._superficial = None

    def __deepcopy__(self, memo: dict) -> ScaleCertNet:
        # The layer's hook is a method of one wrapper; a plain deep copy can bind the copy's hook to yet another
        # copy (ART copies its model shallowly before deep-copying it). Copy the plain model without the hook,
        # leave the original's hook exactly as it was, and wrap the copy anew.
        layer = dict(self.model.named_modules())[self.superficial_layer]
        hooks = dict(layer._forward_hooks)
        layer._forward_hooks.clear()
        try:
            model = copy.deepcopy(self.model, memo)
        finally:
            layer._forward_hooks.update(hooks)
        clone = ScaleCertNet(model, self.superficial_layer, self.sin.top_k, self.input_shape, self.flip_average)
        clone.train(self.training)
        memo[id(self)] = clone
        return clone

    def remove(self) -> nn.Module:
        """Take the SIN hook off and return the plain model."""
        self._handle.remove()
        return self.model
