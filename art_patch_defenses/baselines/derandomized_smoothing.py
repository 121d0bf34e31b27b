"""ART's own patch certifier as a baseline: ``PyTorchDeRandomizedSmoothing`` (column ablation, Levine & Feizi,
NeurIPS 2020, https://arxiv.org/abs/2002.10733) behind the certifier protocol, around the band classifier of a
:class:`~art_patch_defenses.models.bagnet.ColumnBandNet`.

Certified recovery: a patch of ``patch_size`` columns anywhere cannot change the thresholded column vote of a
certified sample. ART's column ablator encodes a pixel as ``(x, 1 - x)``, keeps columns ``j .. j + width - 1``
(wrapping around) and zeroes the rest, which is exactly what :meth:`ColumnBandNet.ablate` does; so the ``base`` of
our Mask-DS backbone is a de-randomized-smoothing base classifier, and ART's vote and its certificate can be
compared with robust masking on the same network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.estimators.certification.derandomized_smoothing import PyTorchDeRandomizedSmoothing
from torch import nn

from art_patch_defenses.certification import RECOVERY, CertificationResult, CertifierMixin
from art_patch_defenses.models.bagnet import ColumnBandNet
from art_patch_defenses.models.registry import build_model, get_spec, make_classifier


class PyTorchDeRandomizedSmoothingCertifier(CertifierMixin, PyTorchDeRandomizedSmoothing):
    """ART's ``PyTorchDeRandomizedSmoothing`` with the certifier protocol (column ablation, ``levine2020``).

    :param patch_size: side in pixels of the patch ``certify`` certifies against (ART's ``size_to_certify``;
        the vote itself does not depend on it).
    Other arguments are ART's. ``predict`` is ART's (vote counts per class, never abstains); ``certify`` is ART's
    ablator certificate; ``predict_base`` and ``attack_surrogate`` are the soft column vote
    (:class:`SoftColumnVote`), the differentiable stand-in that white-box attacks follow.
    """

    certificate_kind = RECOVERY
    certifier_params = ["patch_size"]
    estimator_params = PyTorchDeRandomizedSmoothing.estimator_params + certifier_params

    def __init__(self, *args: Any, patch_size: int = 5, **kwargs: Any) -> None:
        self.patch_size = patch_size
        super().__init__(*args, **kwargs)
        if self.ablation_type != "column" or self.algorithm != "levine2020":
            raise ValueError("the protocol wrapper supports column ablation with algorithm='levine2020' only")
        self._surrogate = None
        self._check_certifier_params()

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One input image: ART's ``input_shape`` is the doubled, ``(x, 1 - x)``-encoded one."""
        return image_shape(self)

    def _check_certifier_params(self) -> None:
        side = min(self.image_shape[-2:])
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, (int, np.integer)) or not (
                1 <= self.patch_size <= side):
            raise ValueError(f"patch_size must be an integer in [1, {side}] pixels, got {self.patch_size!r}")

    def _certify(self, x: np.ndarray, y: np.ndarray | None, batch_size: int, seed: int | None, verbose: bool,
                 **kwargs: Any) -> CertificationResult:
        """ART's certificate: the gap between the two largest vote counts exceeds twice the number of bands a
        ``patch_size``-column patch can reach."""
        if kwargs:
            raise ValueError(f"unknown certify keyword(s) {sorted(kwargs)}")
        counts = self.predict(x, batch_size=batch_size)
        labels = np.zeros(len(x), dtype=np.int64) if y is None else y
        cert, cert_and_correct, prediction = self.ablator.certify(counts, size_to_certify=int(self.patch_size),
                                                                  label=labels)
        certified = (cert if y is None else cert_and_correct).cpu().numpy().astype(bool)
        return CertificationResult(prediction=prediction.cpu().numpy().astype(np.int64), certified=certified)

    def attack_surrogate(self):
        """:func:`soft_vote_classifier` of this estimator (built once)."""
        if self._surrogate is None:
            self._surrogate = soft_vote_classifier(self)
        return self._surrogate

    def predict_base(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> np.ndarray:
        """The soft column vote's scores (log of the mean band softmax)."""
        return self.attack_surrogate().predict(self.check_inputs(x), batch_size=batch_size)

    def for_patch_size(self, patch_size: int) -> PyTorchDeRandomizedSmoothingCertifier:
        """This estimator with another certified patch size (the vote does not depend on it, so the copy shares
        everything else; ART's own estimator cannot be rebuilt from its parameters)."""
        import copy

        clone = copy.copy(self)
        clone.set_params(patch_size=patch_size)
        return clone


def get_art_derandomized_smoothing(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                                   weights_path: str | None = None) -> PyTorchDeRandomizedSmoothingCertifier:
    """Armory-style factory: ART's ``PyTorchDeRandomizedSmoothing`` (``algorithm="levine2020"``, column
    ablation) on the band classifier of a registered :class:`ColumnBandNet` (e.g. ``cifar_mask_ds``), behind the
    certifier protocol.

    ``model_kwargs``: ``name``, ``weights``, ``threshold`` (the softmax threshold of a vote, 0.3 as in the
    paper's CIFAR-10 models) and ``patch_size`` (the certified patch side, default 5); the ablation width is the
    band net's. ``wrapper_kwargs`` go to ART's constructor (e.g. ``device_type``). The input is raw [0, 1] pixels
    (the ablator builds the encoding).
    """
    model_kwargs = dict(model_kwargs)
    name = model_kwargs.pop("name", None)
    weights = weights_path or model_kwargs.pop("weights", None)
    threshold = float(model_kwargs.pop("threshold", 0.3))
    patch_size = model_kwargs.pop("patch_size", 5)
    if model_kwargs:
        raise ValueError(f"unknown model_kwargs {sorted(model_kwargs)}; known: name, weights, threshold, patch_size")
    band_net = build_model(name, weights) if name is not None else None
    if not isinstance(band_net, ColumnBandNet):
        raise ValueError(f"model_kwargs 'name' must name a column-band model (e.g. 'cifar_mask_ds'), got {name!r}")
    spec = get_spec(name)
    kwargs: dict[str, Any] = {"device_type": "cpu", **(wrapper_kwargs or {})}
    return PyTorchDeRandomizedSmoothingCertifier(
        model=band_net.base, loss=nn.CrossEntropyLoss(), input_shape=spec.input_shape, nb_classes=spec.nb_classes,
        ablation_size=band_net.band_width, algorithm="levine2020", ablation_type="column", threshold=threshold,
        logits=True, clip_values=(0.0, 1.0), verbose=False, patch_size=patch_size, **kwargs,
    )


def image_shape(estimator) -> tuple[int, ...]:
    """The shape of one input image of ART's ``PyTorchDeRandomizedSmoothing`` (with ``levine2020`` its
    ``input_shape`` is the doubled, ``(x, 1 - x)``-encoded one)."""
    channels, *hw = estimator.input_shape
    return (channels // 2, *hw) if estimator.algorithm == "levine2020" else tuple(estimator.input_shape)


def soft_vote_classifier(estimator):
    """A ``PyTorchClassifier`` on :class:`SoftColumnVote` of the base classifier of ART's column de-randomized
    smoothing ``estimator``: what white-box attacks on it differentiate."""
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
