"""PatchZero as an ART PyTorch preprocessor: detect patch pixels, repaint them with the dataset mean.

Reference: K. Xu, Y. Xiao, Z. Zheng, K. Cai, R. Nevatia, "PatchZero: Defending against Adversarial Patch
Attacks by Detecting and Zeroing the Patch", WACV 2023, https://arxiv.org/abs/2207.01795

Threat model: a patch of unknown size and location (empirical defence, no certificate). A PSPNet predicts
per pixel whether it is adversarial; the mask is thresholded, dilated, and the masked pixels are replaced by
the dataset's mean pixel: ``X' = X (1 - M) + mean M`` (M = 1 on detected patch pixels).

ART differentiates ``forward`` itself when all preprocessing is PyTorch (it never calls ``estimate_forward``
then), so BPDA lives in ``forward``: its value is the hard, thresholded result, and with ``bpda=True`` its
gradient is that of the sigmoid surrogate (the detector's probability in place of the step function). With
``bpda=False`` the mask is a constant for autograd: the attacker sees only the downstream model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from torch import nn

from art_patch_defenses.patchzero.detector import detector_logits, load_detector


def _locate_checkpoint(path: str | Path, sha256: str | None) -> tuple[Path, str | None]:
    """A bare file name means the project's ``checkpoints/`` (whose record supplies the sha256 on load)."""
    from art_patch_defenses.paths import checkpoints_dir

    path = Path(path)
    if path.parent == Path(".") and not path.is_file():
        path = checkpoints_dir() / path
    return path, sha256


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Morphological dilation of ``(N, 1, H, W)`` masks by ``pixels`` (a square max-pool); differentiable."""
    if pixels == 0:
        return mask
    return nn.functional.max_pool2d(mask, kernel_size=2 * pixels + 1, stride=1, padding=pixels)


class PatchZero(PreprocessorPyTorch):
    """PatchZero preprocessor (Xu et al., WACV 2023): PSPNet patch detection and mean-pixel repainting.

    :param detector: a module returning ``(pixel_logits, image_logits)`` (see ``detector.build_detector``).
    :param fill_value: the dataset's mean pixel, one value per channel (inputs in [0, 1]).
    :param threshold: probability above which a pixel counts as adversarial (paper: 0.5).
    :param dilation: pixels by which the detected mask is dilated.
    :param bpda: if True, gradients pass through the detector via the sigmoid surrogate; if False, the mask is
        a constant for autograd (downstream-only attack).
    :param channels_first: NCHW if True, NHWC otherwise.
    :param apply_fit: apply when fitting the estimator (default False).
    :param apply_predict: apply when predicting (default True).
    :param device_type: ``"cpu"`` or ``"gpu"``.
    """

    params = ["threshold", "dilation", "fill_value", "bpda", "channels_first", "apply_fit", "apply_predict"]

    def __init__(
        self,
        detector: nn.Module,
        fill_value: Sequence[float],
        threshold: float = 0.5,
        dilation: int = 1,
        bpda: bool = True,
        channels_first: bool = True,
        apply_fit: bool = False,
        apply_predict: bool = True,
        device_type: str = "cpu",
    ) -> None:
        super().__init__(device_type=device_type, is_fitted=True, apply_fit=apply_fit, apply_predict=apply_predict)
        self.detector = detector.to(self.device).eval()
        self.fill_value = tuple(float(v) for v in np.asarray(fill_value).reshape(-1))
        self.threshold = threshold
        self.dilation = dilation
        self.bpda = bpda
        self.channels_first = channels_first
        self._check_params()

    @classmethod
    def from_checkpoint(cls, path: str | Path, sha256: str | None = None, **kwargs: Any) -> PatchZero:
        """Load a detector checkpoint written by the trainer; ``fill_value`` defaults to the one stored in it.

        A bare file name is looked up in the project's ``checkpoints/`` and checked against the sha256 that
        ``checkpoints/checkpoints.json`` records for it.
        """
        path, sha256 = _locate_checkpoint(path, sha256)
        content = torch.load(path, map_location="cpu", weights_only=True)
        if "fill_value" not in kwargs:
            if "fill_value" not in content:
                raise ValueError(f"checkpoint {path} stores no fill_value; pass fill_value=")
            kwargs["fill_value"] = [float(v) for v in content["fill_value"]]
        return cls(load_detector(path, sha256), **kwargs)

    def _check_params(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not isinstance(self.dilation, (int, np.integer)) or self.dilation < 0:
            raise ValueError(f"dilation must be a non-negative integer number of pixels, got {self.dilation!r}")
        if not all(0.0 <= v <= 1.0 for v in self.fill_value):
            raise ValueError(f"fill_value must lie in [0, 1] per channel, got {self.fill_value}")
        if not isinstance(self.bpda, bool):
            raise ValueError(f"bpda must be a bool, got {self.bpda!r}")

    def set_params(self, **kwargs: Any) -> None:
        """Set parameters and re-validate; on a ``ValueError`` every parameter keeps its previous value."""
        previous = {key: getattr(self, key) for key in kwargs if key in self.params}
        try:
            super().set_params(**kwargs)
        except ValueError:
            for key, value in previous.items():
                setattr(self, key, value)
            raise

    def _nchw(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"PatchZero expects a 4-D batch, got shape {tuple(x.shape)}")
        x = x if self.channels_first else x.permute(0, 3, 1, 2)
        if x.shape[1] != len(self.fill_value):
            layout = "NCHW" if self.channels_first else "NHWC"
            raise ValueError(
                f"input has {x.shape[1]} channels in {layout} layout, fill_value has {len(self.fill_value)}; "
                "check channels_first"
            )
        if x.shape[0] == 0:
            raise ValueError(f"PatchZero got an empty batch (shape {tuple(x.shape)})")
        # PatchZero runs before the estimator's normalisation: on images in [0, 1]. Anything else would be
        # repainted and classified silently wrong, so refuse it.
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError("PatchZero input contains NaN or infinite values")
        low, high = float(x.detach().min()), float(x.detach().max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"PatchZero input has values in [{low:.4g}, {high:.4g}], outside [0, 1] (images are "
                             "expected as floats in [0, 1], not 0-255, before normalisation)")
        return x

    def _back(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.channels_first else x.permute(0, 2, 3, 1)

    def _soft_and_hard_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Surrogate (dilated probability) and hard (thresholded, dilated) masks, ``(N, 1, H, W)``."""
        pixel_logits, _ = detector_logits(self.detector, x)
        probability = torch.sigmoid(pixel_logits)
        hard = dilate((probability > self.threshold).to(x.dtype), self.dilation)
        return dilate(probability, self.dilation), hard

    def _repaint(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        fill = torch.tensor(self.fill_value, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * (1 - mask) + fill * mask

    def forward(self, x: torch.Tensor, y: Any = None) -> tuple[torch.Tensor, Any]:
        """Hard PatchZero in value; BPDA (sigmoid surrogate) gradient if ``bpda``, else a constant mask."""
        x_nchw = self._nchw(x)
        soft, hard = self._soft_and_hard_masks(x_nchw)
        mask = soft + (hard - soft).detach() if self.bpda else hard.detach()
        return self._back(self._repaint(x_nchw, mask)), y

    def detector_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The detector's per-pixel probability ``(N, 1, H, W)`` that a pixel belongs to a patch, for NCHW images
        in [0, 1], differentiable (what an adaptive attack drives down inside its patch)."""
        return torch.sigmoid(detector_logits(self.detector, x)[0])

    def estimate_forward(self, x: torch.Tensor, y: Any = None) -> torch.Tensor:
        """The differentiable estimate for ART's code paths that do not differentiate ``forward``.

        With ``bpda`` the sigmoid surrogate: repaint with the soft (probability) mask, whose gradient reaches the
        detector. Without it the hard result with the mask a constant for autograd, as in ``forward``: the
        attacker then sees only the downstream model.
        """
        x_nchw = self._nchw(x)
        if self.bpda:
            soft, _ = self._soft_and_hard_masks(x_nchw)
            return self._back(self._repaint(x_nchw, soft))
        # No graph through the detector: nothing may differentiate it, and it saves the memory.
        with torch.no_grad():
            _, hard = self._soft_and_hard_masks(x_nchw)
        return self._back(self._repaint(x_nchw, hard))

    def masks(self, x: np.ndarray, batch_size: int = 256, dilated: bool = True) -> np.ndarray:
        """The binary masks ``(N, H, W)`` PatchZero applies to ``x`` (True = detected patch pixel).

        :param dilated: ``False`` gives the detector's own segmentation (thresholded, before the dilation that
            only widens the repainted area), the mask to score a detector by.
        """
        out = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                batch = self._nchw(torch.as_tensor(x[start : start + batch_size], device=self.device))
                if dilated:
                    hard = self._soft_and_hard_masks(batch)[1]
                else:
                    hard = torch.sigmoid(detector_logits(self.detector, batch)[0]) > self.threshold
                out.append(hard[:, 0].cpu().numpy() > 0.5)
        return np.concatenate(out) if out else np.zeros((0,), dtype=bool)
