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

from art_patch_defenses.certification import RECOVERY, CertificationResult, CertifierMixin, base_classifier
from art_patch_defenses.geometry import all_locations, feature_window, window_masks
from art_patch_defenses.robust_masking.masking import (
    FEATURE_TYPES,
    certify,
    local_features,
    masked_evidence,
    robust_predict,
)
from art_patch_defenses.validation import check_labels


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


class UnmaskedSum(nn.Module):
    """The unmasked vote made differentiable, for attacks on the undefended part: the local logits summed over
    every location (``raw_logits``), or their log-softmax summed, which pushes every location the patch reaches
    towards one class (what flips one-hot votes and softmax confidences)."""

    def __init__(self, backbone: nn.Module, raw_logits: bool) -> None:
        super().__init__()
        self.backbone, self.raw_logits = backbone, raw_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.backbone(x)
        return (logits if self.raw_logits else torch.log_softmax(logits, dim=-1)).sum(dim=(1, 2))


class RobustMaskingMixin(CertifierMixin):
    """The certifier's algorithm on top of an estimator that provides :meth:`local_features`.

    Certified recovery (:data:`~art_patch_defenses.certification.RECOVERY`): no patch of ``patch_size`` pixels
    anywhere changes the robust prediction of a certified sample.
    """

    certificate_kind = RECOVERY
    certify_gives_prediction = True

    def local_features(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        raise NotImplementedError

    def windows_for(self, patch_size: int) -> np.ndarray:
        raise NotImplementedError

    def _certify(self, x: np.ndarray, y: np.ndarray | None, batch_size: int, seed: int | None, verbose: bool,
                 **kwargs: Any) -> CertificationResult:
        """Provable robust-masking analysis (Lemma 1) on the local features: certified iff the robust prediction
        is ``y`` (default: itself) and no patch of the configured size anywhere can change it."""
        if kwargs:
            raise ValueError(f"unknown certify keyword(s) {sorted(kwargs)}")
        windows = self.windows_for(self.patch_size)
        predictions, certified = [], []
        for start in tqdm(range(0, len(x), batch_size), desc="certify (robust masking)", disable=not verbose):
            u = self.local_features(x[start : start + batch_size], batch_size)
            prediction = robust_predict(u, windows, self.threshold, *self.feature_clip)
            labels = prediction if y is None else y[start : start + batch_size]
            predictions.append(prediction)
            certified.append(certify(u, labels, windows, self.threshold, *self.feature_clip))
        return CertificationResult(prediction=np.concatenate(predictions), certified=np.concatenate(certified))

    def predict_base(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> np.ndarray:
        """The unmasked vote: the local features summed over every location (no clipping, no masking)."""
        x = self.check_inputs(x)
        return self.local_features(x, batch_size).sum(axis=(1, 2)).astype(np.float32)

    def attack_surrogate(self):
        """This estimator itself: its forward pass is the masking, differentiable where the math is."""
        return self


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

    certifier_params = ["patch_size", "threshold", "feature_clip", "feature_type"]
    estimator_params = PyTorchClassifier.estimator_params + certifier_params

    def __init__(self, backbone: nn.Module, loss, input_shape: tuple[int, ...], nb_classes: int,
                 patch_size: int = 5, threshold: float = 0.0,
                 feature_clip: tuple[float, float] = (0.0, float("inf")), feature_type: str = "logits",
                 **kwargs: Any) -> None:
        if isinstance(backbone, RobustMaskingHead):  # ART's clone_for_refitting passes the model back
            backbone = backbone.backbone
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

    def _check_certifier_params(self) -> None:
        self._check_masking(input_shape=self.input_shape, **self._masking)

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

    def base_surrogate(self) -> PyTorchClassifier:
        """A differentiable ART classifier that follows the unmasked vote (:meth:`predict_base`), for attacking the
        undefended part (:class:`UnmaskedSum`)."""
        return base_classifier(self, UnmaskedSum(self.model.backbone, self.feature_type == "logits"))

    def patch_reach(self, locations: np.ndarray) -> np.ndarray:
        """Cell masks ``(P, X, Y)`` of the local features whose receptive field overlaps a ``patch_size`` patch
        at each top-left pixel of ``locations`` ``(P, 2)`` (feature ``b`` sees pixels ``b * stride ..
        b * stride + receptive_field - 1`` of an axis, around the edge where the backbone wraps)."""
        backbone, locations = self._backbone_geometry, np.asarray(locations).reshape(-1, 2)
        input_hw = tuple(self.input_shape[-2:])
        per_axis = []
        for axis, (length, cells) in enumerate(zip(input_hw, backbone.feature_map_size(input_hw), strict=True)):
            seen = np.arange(cells)[:, None] * backbone.stride[axis] + np.arange(backbone.receptive_field[axis])
            seen = seen % length if backbone.wrap[axis] else np.minimum(seen, length - 1)
            covers = np.zeros((cells, length), dtype=bool)
            covers[np.arange(cells)[:, None], seen] = True
            pixels = np.arange(length)
            patch = (pixels >= locations[:, axis, None]) & (pixels < locations[:, axis, None] + self.patch_size)
            per_axis.append((patch[:, None, :] & covers[None]).any(axis=2))  # (P, cells)
        return per_axis[0][:, :, None] & per_axis[1][:, None, :]

    def weakest_placements(self, x: np.ndarray, y: np.ndarray, count: int = 1, seed: int = 0,
                           batch_size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where a ``patch_size`` patch has the best chance to fool the unmasked vote (:meth:`predict_base`): per
        sample the ``count`` (placement, class) pairs whose margin left outside the patch's reach is smallest.

        ``slack`` is that margin (true class minus the other class, summed over the locations the patch does not
        reach) less the most the reached locations can move it: one vote (or confidence) each, for ``"prediction"``
        and ``"confidence"`` features. ``slack > 0``: no patch at that place can make the vote prefer that class;
        ``slack <= 0``: only if every reached location goes over to it (0 is a tie). Raw logits are unbounded
        (slack ``-inf``; ranked by the margin). Ties are broken at random with ``seed``.

        :return: top-left ``locations (N, count, 2)``, ``targets (N, count)`` and ``slack (N, count)``.
        """
        x = self.check_inputs(x)
        y = check_labels(y, len(x), self.nb_classes)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        places = all_locations(tuple(self.input_shape[-2:]), (self.patch_size, self.patch_size))
        reach = self.patch_reach(places).reshape(len(places), -1).astype(np.float64)  # (P, cells)
        features = self.local_features(x, batch_size)
        features = features.reshape(len(x), -1, features.shape[-1])  # (N, cells, C)
        outside = features.sum(axis=1)[:, None, :] - np.einsum("pl,nlc->npc", reach, features)  # (N, P, C)
        margin = np.take_along_axis(outside, y[:, None, None], axis=2) - outside
        bounded = self.feature_type != "logits"
        score = margin - reach.sum(axis=1)[None, :, None] if bounded else margin
        score[np.arange(len(x)), :, y] = np.inf  # the true class is not a target
        flat = score.reshape(len(x), -1)
        ties = np.random.default_rng(seed).random(flat.shape)
        order = np.stack([np.lexsort((ties[i], flat[i]))[:count] for i in range(len(x))])
        best = np.take_along_axis(flat, order, axis=1)
        slack = best if bounded else np.full(best.shape, -np.inf)
        return places[order // self.nb_classes], order % self.nb_classes, slack
