"""MRS as an ART certification estimator: ``PyTorchMRS(MRSMixin, PyTorchClassifier)``.

Follows ART's ``art.estimators.certification.randomized_smoothing``: ``predict`` is the smoothed classifier (a zero
row where it abstains), ``certify`` is CERTIFY with n0 selection and n estimation samples. The difference is the
noise: Gaussian only inside a mask ``M`` (the patch region), ``N(0, sigma^2 M)``, so the certified L2 radius
bounds any change of the pixels inside ``M``. Without a mask the region comes from the localisation
(:mod:`.localization`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from tqdm.auto import tqdm

from art_patch_defenses.certification import CertificationResult
from art_patch_defenses.mrs.localization import Localization, localize
from art_patch_defenses.mrs.smoothing import (
    certified_radius,
    from_255,
    lower_confidence_bound,
    masked_noise,
    top_two_test,
)
from art_patch_defenses.validation import check_images, check_labels


class MRSMixin:
    """Mask-guided randomized smoothing on top of a classifier's base ``predict``."""

    def _base_labels(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """The base classifier's labels (no smoothing)."""
        raise NotImplementedError

    def _counts(self, image: np.ndarray, mask: np.ndarray, num: int, batch_size: int,
                generator: torch.Generator | None) -> np.ndarray:
        """Class counts of the base classifier on ``num`` copies of ``image`` with noise inside ``mask``."""
        counts = np.zeros(self.nb_classes, dtype=np.int64)
        mask_t = torch.from_numpy(np.asarray(mask, dtype=np.float32))
        for start in range(0, num, batch_size):
            size = min(batch_size, num - start)
            noisy = torch.from_numpy(image)[None] + masked_noise((size, *image.shape), mask_t, self.sigma, generator)
            counts += np.bincount(self._base_labels(noisy.numpy(), batch_size), minlength=self.nb_classes)
        return counts

    def localize(self, x: np.ndarray, batch_size: int = 256, verbose: bool = False) -> list[Localization]:
        """Patch localisation (section 3.2) for each image of ``x``."""
        check_images(x, "x", input_shape=self.input_shape, clip_values=self.clip_values,
                     channels_first=self.channels_first)
        return [localize(image, lambda copies: self._base_labels(copies, batch_size), self.patch_size, self.tau,
                         self.stride, self.margin)
                for image in tqdm(x, desc="localize", disable=not verbose)]

    def _masks_for(self, x: np.ndarray, mask: np.ndarray | None, batch_size: int,
                   verbose: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-image masks ``(N, H, W)``, localisation abstains ``(N,)`` and locations ``(N, 2)``."""
        if mask is None:
            found = self.localize(x, batch_size, verbose)
            return (np.stack([f.mask for f in found]), np.array([f.abstain for f in found]),
                    np.array([f.location for f in found]))
        mask = np.asarray(mask).astype(bool)
        mask = np.broadcast_to(mask, (len(x), *mask.shape[-2:])) if mask.ndim == 2 else mask
        if mask.shape != (len(x), *x.shape[2:]):
            raise ValueError(f"mask must be (H, W) or (N, H, W) = {(len(x), *x.shape[2:])}, got {mask.shape}")
        return mask, np.zeros(len(x), dtype=bool), np.full((len(x), 2), -1)

    def certify(self, x: np.ndarray, mask: np.ndarray | None = None, n0: int | None = None, n: int | None = None,
                alpha: float | None = None, batch_size: int = 256, seed: int | None = None,
                verbose: bool = False) -> CertificationResult:
        """Algorithm 1 (CERTIFY) per image, inside ``mask`` or, without one, the localised region.

        :param mask: ``(H, W)`` or ``(N, H, W)`` patch-region masks; ``None`` localises each image.
        :param seed: seeds the noise so that a certificate can be reproduced.
        :return: :class:`CertificationResult`: ``prediction`` (-1 = abstain), ``radius`` (L2 in [0, 1] pixel
            units, 0 where abstaining; ``from_255`` converts the paper's figures), ``certified`` (radius > 0),
            ``location`` (localised block, -1 when a mask was given).
        """
        n0, n, alpha = n0 or self.n0, n or self.sample_size, alpha or self.alpha
        check_images(x, "x", input_shape=self.input_shape, clip_values=self.clip_values,
                     channels_first=self.channels_first)
        masks, localisation_abstains, locations = self._masks_for(x, mask, batch_size, verbose)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        prediction = np.full(len(x), -1)
        radius = np.zeros(len(x))
        for i in tqdm(range(len(x)), desc="certify", disable=not verbose):
            if localisation_abstains[i]:
                continue
            guess = int(self._counts(x[i], masks[i], n0, batch_size, generator).argmax())
            count = self._counts(x[i], masks[i], n, batch_size, generator)[guess]
            p_lower = lower_confidence_bound(int(count), n, alpha)
            if p_lower > 0.5:
                prediction[i], radius[i] = guess, certified_radius(p_lower, self.sigma)
        return CertificationResult(prediction=prediction, certified=radius > 0, radius=radius, location=locations)

    def eval_and_certify(self, x: np.ndarray, y: np.ndarray, radius: float = from_255(25.0),
                         mask: np.ndarray | None = None, **certify_kwargs: Any) -> tuple[float, float]:
        """Accuracy of the certified prediction (radius 0) and certified accuracy at ``radius`` ([0, 1] units)."""
        y = check_labels(y, len(x), self.nb_classes)
        result = self.certify(x, mask, **certify_kwargs)
        right = result.prediction == y
        return float(right.mean()), float((right & (result.radius >= radius)).mean())

    def certified_accuracy(self, x: np.ndarray, y: np.ndarray, patch_size: int | None = None,
                           radius: float = from_255(25.0)) -> float:
        """Fraction of ``x`` whose localised, smoothed prediction is right with an L2 radius of at least ``radius``
        (the evaluation runner's common certifier interface; ``patch_size`` must be the estimator's own)."""
        if patch_size is not None and patch_size != self.patch_size:
            raise ValueError(f"this MRS localises {self.patch_size}-px blocks, not {patch_size}; "
                             "set_params(patch_size=...) first")
        return self.eval_and_certify(x, y, radius)[1]

    def smoothed_predict(self, x: np.ndarray, mask: np.ndarray | None = None, batch_size: int = 256,
                         seed: int | None = None, verbose: bool = False) -> np.ndarray:
        """ART's randomized-smoothing PREDICT with masked noise: one-hot rows, a zero row where it abstains."""
        check_images(x, "x", input_shape=self.input_shape, clip_values=self.clip_values,
                     channels_first=self.channels_first)
        masks, localisation_abstains, _ = self._masks_for(x, mask, batch_size, verbose)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out = np.zeros((len(x), self.nb_classes), dtype=np.float32)
        for i in range(len(x)):
            if not localisation_abstains[i]:
                label = top_two_test(self._counts(x[i], masks[i], self.sample_size, batch_size, generator),
                                     self.alpha)
                if label >= 0:
                    out[i, label] = 1.0
        return out


class PyTorchMRS(MRSMixin, PyTorchClassifier):
    """Mask-guided randomized smoothing (Zhang et al., Sci China Inf Sci 2022) as an ART PyTorch classifier.

    :param model: the base classifier (trained with noise inside random squares: :mod:`.training`).
    :param sigma: noise standard deviation in [0, 1] pixel units (the paper's sigma / 255).
    :param sample_size: n, the estimation samples (also PREDICT's samples); ``n0``: the selection samples.
    :param alpha: failure probability of the confidence bound and PREDICT's test.
    :param patch_size: the localisation block side ``s`` in pixels; ``stride``, ``tau`` and ``margin`` as in
        :func:`.localization.localize`.
    Other arguments are ``PyTorchClassifier``'s. ``predict`` is the smoothed, localised classifier; the base
    classifier's gradients (``loss_gradient``) are ART's, for attacks with expectation over the noise.
    """

    mrs_params = ["sigma", "sample_size", "n0", "alpha", "patch_size", "stride", "tau", "margin"]
    estimator_params = PyTorchClassifier.estimator_params + mrs_params

    def __init__(self, model: torch.nn.Module, loss, input_shape: tuple[int, ...], nb_classes: int,
                 sigma: float = from_255(25.0), sample_size: int = 1000, n0: int = 100, alpha: float = 0.001,
                 patch_size: int = 5, stride: int = 1, tau: float = 8.0, margin: int = 3,
                 **kwargs: Any) -> None:
        super().__init__(model, loss, input_shape, nb_classes, **kwargs)
        self.sigma, self.sample_size, self.n0, self.alpha = sigma, sample_size, n0, alpha
        self.patch_size, self.stride, self.tau, self.margin = patch_size, stride, tau, margin
        self._check_mrs_params()

    def _check_mrs_params(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0 ([0, 1] pixel units), got {self.sigma}")
        for name in ("sample_size", "n0", "stride"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if not isinstance(self.patch_size, (int, np.integer)) or not 1 <= self.patch_size <= min(
                self.input_shape[-2:]):
            raise ValueError(f"patch_size must be an integer in [1, {min(self.input_shape[-2:])}], "
                             f"got {self.patch_size!r}")
        if not isinstance(self.margin, (int, np.integer)) or self.margin < 0:
            raise ValueError(f"margin must be a non-negative integer, got {self.margin!r}")

    def set_params(self, **kwargs: Any) -> None:
        """Set parameters and re-validate; on a ``ValueError`` every parameter keeps its previous value."""
        previous = {key: getattr(self, key) for key in kwargs if key in self.mrs_params}
        try:
            super().set_params(**kwargs)
            self._check_mrs_params()
        except ValueError:
            for key, value in previous.items():
                setattr(self, key, value)
            raise

    def _base_labels(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        return PyTorchClassifier.predict(self, x.astype(np.float32), batch_size=batch_size).argmax(axis=1)

    def predict(self, x: np.ndarray, batch_size: int = 256, **kwargs: Any) -> np.ndarray:
        """The smoothed classifier on localised regions (one-hot rows; zero rows where it abstains)."""
        return self.smoothed_predict(x, batch_size=batch_size, verbose=kwargs.get("verbose", False))

    def predict_base(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The base classifier's class scores (no noise, no localisation)."""
        return PyTorchClassifier.predict(self, x, batch_size=batch_size)
