"""MRS as an ART certification estimator: ``PyTorchMRS(MRSMixin, PyTorchClassifier)``.

Follows ART's ``art.estimators.certification.randomized_smoothing``: ``predict`` is the smoothed classifier (with
the protocol's abstain column, :mod:`art_patch_defenses.certification`), ``certify`` is CERTIFY with n0 selection
and n estimation samples. The difference is the noise: Gaussian only inside a mask ``M`` (the patch region),
``N(0, sigma^2 M)``, so the certified L2 radius bounds any change of the pixels inside ``M``. Without a mask the
region comes from the localisation (:mod:`.localization`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from tqdm.auto import tqdm

from art_patch_defenses.certification import (
    ABSTAIN,
    REGION_L2,
    CertificationResult,
    CertifierMixin,
    base_classifier,
    with_abstain_column,
)
from art_patch_defenses.mrs.localization import Localization, localize
from art_patch_defenses.mrs.smoothing import (
    certified_radius,
    from_255,
    lower_confidence_bound,
    masked_noise,
    top_two_test,
)


class MRSMixin(CertifierMixin):
    """Mask-guided randomized smoothing on top of a classifier's base ``predict``.

    Region-L2 certificate (:data:`~art_patch_defenses.certification.REGION_L2`): the smoothed prediction cannot be
    changed by an L2 perturbation of at most the certified radius inside the region (the localised block or a
    given ``mask``); a sample counts as certified when that radius is at least ``min_radius``. ``predict``
    returns the extra abstain column.
    """

    certificate_kind = REGION_L2
    abstains = True
    certify_batch_size = 256

    def _base_labels(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """The base classifier's labels (no smoothing)."""
        raise NotImplementedError

    def _generator(self, seed: int | None) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed if seed is None else seed))

    def noise_counts(self, image: np.ndarray, mask: np.ndarray, num: int, batch_size: int,
                     generator: torch.Generator) -> np.ndarray:
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
        x = self.check_inputs(x)
        return [localize(image, lambda copies: self._base_labels(copies, batch_size), self.patch_size, self.tau,
                         self.stride, self.margin)
                for image in tqdm(x, desc="localize (MRS)", disable=not verbose)]

    def _regions(self, x: np.ndarray, mask: np.ndarray | None, batch_size: int,
                 verbose: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-image regions ``(N, H, W)``, localisation abstains ``(N,)`` and locations ``(N, 2)``."""
        if mask is None:
            found = self.localize(x, batch_size, verbose)
            return (np.stack([f.mask for f in found]), np.array([f.abstain for f in found]),
                    np.array([f.location for f in found]))
        mask = np.asarray(mask)
        if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must be binary (bool or 0/1)")
        mask = mask.astype(bool)
        mask = np.broadcast_to(mask, (len(x), *mask.shape[-2:])) if mask.ndim == 2 else mask
        if mask.shape != (len(x), *x.shape[2:]):
            raise ValueError(f"mask must be (H, W) or (N, H, W) = {(len(x), *x.shape[2:])}, got {mask.shape}")
        return mask, np.zeros(len(x), dtype=bool), np.full((len(x), 2), -1)

    def _certify(self, x: np.ndarray, y: np.ndarray | None, batch_size: int, seed: int | None, verbose: bool,
                 mask: np.ndarray | None = None, **kwargs: Any) -> CertificationResult:
        """Algorithm 1 (CERTIFY) per image with ``n0`` selection and ``sample_size`` estimation samples, inside
        ``mask`` (``(H, W)`` or ``(N, H, W)``) or, without one, the localised region. ``radius`` is L2 in [0, 1]
        pixel units (0 where abstaining; ``from_255`` converts the paper's figures); ``certified``: radius of at
        least ``min_radius`` (and > 0), for ``y`` when given; ``location``: the localised block (-1 when a mask
        was given)."""
        if kwargs:
            raise ValueError(f"unknown certify keyword(s) {sorted(kwargs)}; MRS takes mask=")
        regions, localisation_abstains, locations = self._regions(x, mask, batch_size, verbose)
        generator = self._generator(seed)
        prediction = np.full(len(x), ABSTAIN)
        radius = np.zeros(len(x))
        for i in tqdm(range(len(x)), desc="certify (MRS)", disable=not verbose):
            if localisation_abstains[i]:
                continue
            guess = int(self.noise_counts(x[i], regions[i], self.n0, batch_size, generator).argmax())
            count = self.noise_counts(x[i], regions[i], self.sample_size, batch_size, generator)[guess]
            p_lower = lower_confidence_bound(int(count), self.sample_size, self.alpha)
            if p_lower > 0.5:
                prediction[i], radius[i] = guess, certified_radius(p_lower, self.sigma)
        certified = (radius > 0) & (radius >= self.min_radius)
        if y is not None:
            certified &= prediction == y
        return CertificationResult(prediction=prediction, certified=certified, radius=radius, location=locations)

    def smoothed_labels(self, x: np.ndarray, mask: np.ndarray | None = None, batch_size: int = 256,
                        seed: int | None = None, verbose: bool = False) -> np.ndarray:
        """ART's randomized-smoothing PREDICT with masked noise (``sample_size`` samples, two-sided test at
        ``alpha``): labels, :data:`ABSTAIN` where it abstains."""
        x = self.check_inputs(x)
        regions, localisation_abstains, _ = self._regions(x, mask, batch_size, verbose)
        generator = self._generator(seed)
        labels = np.full(len(x), ABSTAIN)
        for i in range(len(x)):
            if not localisation_abstains[i]:
                counts = self.noise_counts(x[i], regions[i], self.sample_size, batch_size, generator)
                labels[i] = top_two_test(counts, self.alpha)
        return labels

    def attack_surrogate(self):
        """The base classifier; attack it with expectation over the noise (``attacks.eot``)."""
        return base_classifier(self)


class PyTorchMRS(MRSMixin, PyTorchClassifier):
    """Mask-guided randomized smoothing (Zhang et al., Sci China Inf Sci 2022) as an ART PyTorch classifier.

    :param model: the base classifier (trained with noise inside random squares: :mod:`.training`).
    :param sigma: noise standard deviation in [0, 1] pixel units (the paper's sigma / 255).
    :param sample_size: n, the estimation samples (also PREDICT's samples); ``n0``: the selection samples.
    :param alpha: failure probability of the confidence bound and PREDICT's test.
    :param patch_size: the localisation block side ``s`` in pixels; ``stride``, ``tau`` and ``margin`` as in
        :func:`.localization.localize`.
    :param min_radius: the L2 radius ([0, 1] pixel units) a sample must be certified for to count as certified
        (default 25/255, the paper's CIFAR-10 operating point).
    :param seed: seeds the noise of ``certify`` and ``predict`` when they get no ``seed`` (reproducible results).
    Other arguments are ``PyTorchClassifier``'s. ``predict`` is the smoothed, localised classifier with the
    protocol's abstain column; the base classifier's gradients (``loss_gradient``) are ART's, for attacks with
    expectation over the noise.
    """

    certifier_params = ["sigma", "sample_size", "n0", "alpha", "patch_size", "stride", "tau", "margin",
                        "min_radius", "seed"]
    estimator_params = PyTorchClassifier.estimator_params + certifier_params

    def __init__(self, model: torch.nn.Module, loss, input_shape: tuple[int, ...], nb_classes: int,
                 sigma: float = from_255(25.0), sample_size: int = 1000, n0: int = 100, alpha: float = 0.001,
                 patch_size: int = 5, stride: int = 1, tau: float = 8.0, margin: int = 3,
                 min_radius: float = from_255(25.0), seed: int = 0, **kwargs: Any) -> None:
        super().__init__(model, loss, input_shape, nb_classes, **kwargs)
        self.sigma, self.sample_size, self.n0, self.alpha = sigma, sample_size, n0, alpha
        self.patch_size, self.stride, self.tau, self.margin = patch_size, stride, tau, margin
        self.min_radius, self.seed = min_radius, seed
        self._check_certifier_params()

    def _check_certifier_params(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0 ([0, 1] pixel units), got {self.sigma}")
        for name in ("sample_size", "n0", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        side = min(self.input_shape[-2:])
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, (int, np.integer)) or not (
                1 <= self.patch_size <= side):
            raise ValueError(f"patch_size must be an integer in [1, {side}], got {self.patch_size!r}")
        if not isinstance(self.margin, (int, np.integer)) or self.margin < 0:
            raise ValueError(f"margin must be a non-negative integer, got {self.margin!r}")
        if not self.min_radius >= 0:
            raise ValueError(f"min_radius must be >= 0 ([0, 1] pixel units), got {self.min_radius}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def _base_labels(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        return PyTorchClassifier.predict(self, x.astype(np.float32), batch_size=batch_size).argmax(axis=1)

    def predict(self, x: np.ndarray, batch_size: int = 256, mask: np.ndarray | None = None, seed: int | None = None,
                **kwargs: Any) -> np.ndarray:
        """The smoothed classifier on localised regions (or ``mask``): one-hot rows plus the abstain column."""
        labels = self.smoothed_labels(x, mask, batch_size, seed, verbose=kwargs.get("verbose", False))
        scores = np.eye(self.nb_classes, dtype=np.float32)[np.maximum(labels, 0)]
        return with_abstain_column(scores, labels == ABSTAIN)

    def predict_base(self, x: np.ndarray, batch_size: int = 256, **kwargs: Any) -> np.ndarray:
        """The base classifier's class scores (no localisation; ``x`` may carry smoothing noise beyond the clip
        range, as the base classifier sees it under noise)."""
        return PyTorchClassifier.predict(self, self.check_inputs(x, clip=False), batch_size=batch_size, **kwargs)
