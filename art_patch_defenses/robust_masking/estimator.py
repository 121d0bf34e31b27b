"""Robust masking as an ART certification estimator: ``PyTorchRobustMasking(RobustMaskingMixin, PyTorchClassifier)``.

The forward pass of the wrapped model *is* the defence (backbone local logits -> clipping -> per-class window
masking), so ART's attacks attack the defended model adaptively, with the gradient of the masking operation
where it has one. ``certify`` runs the provable analysis of :mod:`.masking` on the local logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn
from tqdm.auto import tqdm

from art_patch_defenses.certification import CertificationResult
from art_patch_defenses.geometry import feature_window, window_masks
from art_patch_defenses.robust_masking.masking import (
    FEATURE_TYPES,
    certify,
    local_features,
    masked_evidence,
    robust_predict,
)
from art_patch_defenses.validation import check_images, check_labels


class RobustMaskingHead(nn.Module):
    """``backbone`` (local logits ``(N, X, Y, C)``) followed by robust masking: returns class evidence ``(N, C)``."""

    def __init__(self, backbone: nn.Module, windows: np.ndarray, threshold: float,
                 feature_clip: tuple[float, float], feature_type: str = "logits") -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("windows", torch.from_numpy(windows.astype(np.float32)), persistent=False)
        self.threshold = threshold
        self.feature_clip = feature_clip
        self.feature_type = feature_type

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Local features ``(N, X, Y, C)`` of the head's type (before clipping)."""
        return local_features(self.backbone(x), self.feature_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_evidence(self.features(x), self.windows, self.threshold, *self.feature_clip)


class RobustMaskingMixin:
    """The certifier's algorithm on top of an estimator that provides :meth:`local_features`."""

    def local_features(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        raise NotImplementedError

    def windows_for(self, patch_size: int) -> np.ndarray:
        raise NotImplementedError

    def certify(self, x: np.ndarray, y: np.ndarray, patch_size: int | None = None, batch_size: int = 128,
                verbose: bool = False) -> CertificationResult:
        """Provable robust-masking analysis: certified iff the robust prediction is ``y`` and no patch of
        ``patch_size`` pixels (default: the estimator's) anywhere can change it.

        :return: :class:`CertificationResult` with ``prediction`` and ``certified``.
        """
        check_images(x, "x", input_shape=self.input_shape, clip_values=self.clip_values,
                     channels_first=self.channels_first)
        y = check_labels(y, len(x), self.nb_classes)
        windows = self.windows_for(patch_size if patch_size is not None else self.patch_size)
        predictions, certified = [], []
        for start in tqdm(range(0, len(x), batch_size), desc="certify", disable=not verbose):
            u = self.local_features(x[start : start + batch_size], batch_size)
            predictions.append(robust_predict(u, windows, self.threshold, *self.feature_clip))
            certified.append(certify(u, y[start : start + batch_size], windows, self.threshold, *self.feature_clip))
        return CertificationResult(prediction=np.concatenate(predictions), certified=np.concatenate(certified))

    def certified_accuracy(self, x: np.ndarray, y: np.ndarray, patch_size: int | None = None) -> float:
        """Fraction of ``x`` certified correct against any one patch of ``patch_size`` pixels (the evaluation
        runner's common certifier interface)."""
        return float(np.mean(self.certify(x, y, patch_size).certified))

    def eval_and_certify(self, x: np.ndarray, y: np.ndarray, patch_size: int | None = None,
                         batch_size: int = 128, verbose: bool = False) -> tuple[float, float]:
        """Clean accuracy of the robust prediction and certified accuracy, as ART's de-randomized smoothing."""
        result = self.certify(x, y, patch_size, batch_size, verbose)
        labels = check_labels(y, len(x), self.nb_classes)
        return float(np.mean(result.prediction == labels)), float(np.mean(result.certified))


class PyTorchRobustMasking(RobustMaskingMixin, PyTorchClassifier):
    """PatchGuard robust masking (Xiang et al., USENIX Security 2021) as an ART PyTorch classifier.

    :param backbone: a small-receptive-field network returning local logits ``(N, X, Y, C)`` with attributes
        ``receptive_field``, ``stride`` and ``wrap`` (pairs) and ``feature_map_size(input_hw)``.
    :param patch_size: side in pixels of the patch the defence (and its certificate) is set for.
    :param threshold: T in [0, 1) (paper: 0 for the provable analysis).
    :param feature_clip: ``(c_low, c_high)`` applied to the local features (paper: ``[0, inf)``).
    :param feature_type: ``"logits"``, ``"confidence"`` (softmax) or ``"prediction"`` (one-hot, a vote per
        location as in de-randomized smoothing; attacked through the softmax's gradient).
    Other arguments are ``PyTorchClassifier``'s; its ``predict`` returns the masked class evidence.
    """

    masking_params = ["patch_size", "threshold", "feature_clip", "feature_type"]
    estimator_params = PyTorchClassifier.estimator_params + masking_params

    def __init__(self, backbone: nn.Module, loss, input_shape: tuple[int, ...], nb_classes: int,
                 patch_size: int = 5, threshold: float = 0.0,
                 feature_clip: tuple[float, float] = (0.0, float("inf")), feature_type: str = "logits",
                 **kwargs: Any) -> None:
        self._backbone_geometry = backbone
        self._masking = {"patch_size": patch_size, "threshold": threshold, "feature_clip": tuple(feature_clip),
                         "feature_type": feature_type}
        self._check_masking(input_shape=input_shape, **self._masking)
        head = RobustMaskingHead(backbone, self.windows_for(patch_size, input_shape), threshold,
                                 self._masking["feature_clip"], feature_type)
        super().__init__(head, loss, input_shape, nb_classes, **kwargs)

    @staticmethod
    def _check_masking(patch_size, threshold, feature_clip, feature_type, input_shape) -> None:
        if not isinstance(patch_size, (int, np.integer)) or not 1 <= patch_size <= min(input_shape[-2:]):
            raise ValueError(f"patch_size must be an integer in [1, {min(input_shape[-2:])}] pixels, got {patch_size}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if len(feature_clip) != 2 or not feature_clip[0] < feature_clip[1]:
            raise ValueError(f"feature_clip must be (low, high) with low < high, got {feature_clip}")
        if feature_type not in FEATURE_TYPES:
            raise ValueError(f"feature_type must be one of {', '.join(FEATURE_TYPES)}, got {feature_type!r}")

    def _update_masking(self, **change: Any) -> None:
        """Validate the masking settings with ``change`` applied, then apply it and refresh the head; a bad value
        raises and leaves every setting as it was."""
        if "feature_clip" in change:
            change["feature_clip"] = tuple(change["feature_clip"])
        self._check_masking(input_shape=self.input_shape, **(self._masking | change))
        self._masking.update(change)
        head = self.model
        head.windows = torch.from_numpy(self.windows_for(self.patch_size).astype(np.float32)).to(self.device)
        head.threshold, head.feature_clip, head.feature_type = self.threshold, self.feature_clip, self.feature_type

    def windows_for(self, patch_size: int, input_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Cell masks of every feature window a ``patch_size``-pixel patch can corrupt."""
        backbone = self._backbone_geometry
        input_hw = tuple((input_shape or self.input_shape)[-2:])
        window = tuple(feature_window(patch_size, r, s)
                       for r, s in zip(backbone.receptive_field, backbone.stride, strict=True))
        return window_masks(backbone.feature_map_size(input_hw), window, backbone.wrap)

    patch_size = property(lambda self: self._masking["patch_size"],
                          lambda self, value: self._update_masking(patch_size=value))
    threshold = property(lambda self: self._masking["threshold"],
                         lambda self, value: self._update_masking(threshold=value))
    feature_clip = property(lambda self: self._masking["feature_clip"],
                            lambda self, value: self._update_masking(feature_clip=value))
    feature_type = property(lambda self: self._masking["feature_type"],
                            lambda self, value: self._update_masking(feature_type=value))

    def local_features(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Local features ``(N, X, Y, C)`` of the estimator's ``feature_type`` for images ``x`` (the estimator's
        preprocessing applied; not yet clipped)."""
        self.model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                batch, _ = self._apply_preprocessing(x[start : start + batch_size], y=None, fit=False)
                batch = torch.as_tensor(batch, device=self.device)
                out.append(self.model.features(batch).double().cpu().numpy())
        return np.concatenate(out)
