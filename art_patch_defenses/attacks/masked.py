"""Per-sample masked attacks: ART's PGD with a per-sample mask, and AutoPGD confined to the patch.

ART's ``ProjectedGradientDescent`` honours a per-sample ``mask`` (``mask.ndim == x.ndim``): it zeroes the
gradient and the random start outside it. ART's ``AutoProjectedGradientDescent`` does not: its random start
ignores the mask and the mask is not sliced per batch. :class:`MaskedAutoPGD` confines it by putting a
:class:`RestrictToMask` preprocessor in front of the estimator's own defences for the duration of the attack:
the estimator then only ever sees ``x_clean * (1 - M) + x * M``, so AutoPGD's steps and random start outside
the patch have no effect on the loss, and the result is re-composed the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.attacks.evasion import AutoProjectedGradientDescent, ProjectedGradientDescent
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from tqdm.auto import tqdm

from art_patch_defenses.validation import check_estimator_inputs, check_labels

ART_PREDICT_BATCH = 128


def _check_masks(mask: np.ndarray, x: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != x.shape:
        raise ValueError(f"mask must have the shape of x {x.shape} (one mask per sample), got {mask.shape}")
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError("mask must be binary (0/1 or bool)")
    return mask.astype(x.dtype)


def seed_art_random_start(seed: int) -> None:
    """Seed the generators ART's attacks draw their random starts from (numpy's global one, and torch's)."""
    np.random.seed(seed)
    torch.manual_seed(seed)


def _labels_for(estimator, x: np.ndarray, y: np.ndarray | None, batch_size: int) -> np.ndarray:
    if y is None:
        return estimator.predict(x, batch_size=batch_size).argmax(1)
    return check_labels(y, len(x), estimator.nb_classes)


def masked_pgd(
    estimator,
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray | None = None,
    eps: float = 1.0,
    eps_step: float = 0.01,
    max_iter: int = 100,
    num_random_init: int = 1,
    targeted: bool = False,
    batch_size: int = 64,
    verbose: bool = True,
    seed: int | None = None,
) -> np.ndarray:
    """Masked PGD (L-inf) with ART's ``ProjectedGradientDescent`` and a per-sample mask.

    :param estimator: any ART classifier with loss gradients (defended or not: it is attacked white-box).
    :param x: clean images in [0, 1], layout of the estimator.
    :param mask: ``x``-shaped 0/1 array, 1 on the patch pixels of each sample.
    :param y: true labels (untargeted) or target labels (``targeted=True``); default: the predictions.
    :param seed: seeds ART's random start (it draws from numpy's global generator), so a rerun is identical.
    :return: adversarial images equal to ``x`` outside the mask.
    """
    x = check_estimator_inputs(estimator, x)
    mask = _check_masks(mask, x)
    if seed is not None:
        seed_art_random_start(seed)
    attack = ProjectedGradientDescent(
        estimator, norm=np.inf, eps=eps, eps_step=eps_step, max_iter=max_iter, targeted=targeted,
        num_random_init=num_random_init, batch_size=batch_size, verbose=verbose,
    )
    labels = _labels_for(estimator, x, y, batch_size)
    x_adv = attack.generate(x, y=labels, mask=mask)
    return np.where(mask > 0, x_adv, x).astype(x.dtype)


def masked_pgd_surrogate(estimator, x: np.ndarray, mask: np.ndarray, y: np.ndarray | None = None,
                         **pgd_kwargs: Any) -> np.ndarray:
    """:func:`masked_pgd` against a certifier's ``attack_surrogate()`` (the differentiable network the certifier
    protocol names for white-box attacks, e.g. the soft column vote of de-randomized smoothing); judge the result
    with the certifier's own ``predict``. ``pgd_kwargs`` are :func:`masked_pgd`'s."""
    if not hasattr(estimator, "attack_surrogate"):
        raise ValueError(f"{type(estimator).__name__} is not a certifier (it has no attack_surrogate()); "
                         "use masked_pgd")
    return masked_pgd(estimator.attack_surrogate(), x, mask, y, **pgd_kwargs)


class RestrictToMask(PreprocessorPyTorch):
    """Preprocessor that keeps ``x`` only inside a mask and the clean images outside: ``x0 (1 - M) + x M``.

    It holds one batch of clean images and masks and refuses a batch of another size, so it cannot silently
    pair an image with another sample's mask. Its gradient is the mask (exact).
    """

    params = ["x_clean", "mask"]

    def __init__(self, x_clean: np.ndarray, mask: np.ndarray, device_type: str = "cpu") -> None:
        super().__init__(device_type=device_type, apply_fit=False, apply_predict=True)
        self.x_clean = torch.as_tensor(x_clean, device=self.device)
        self.mask = torch.as_tensor(mask, device=self.device)

    def forward(self, x: torch.Tensor, y: Any = None) -> tuple[torch.Tensor, Any]:
        if x.shape != self.x_clean.shape:
            raise ValueError(
                f"RestrictToMask holds a batch of shape {tuple(self.x_clean.shape)}, got {tuple(x.shape)}"
            )
        return self.x_clean * (1 - self.mask) + x * self.mask, y


class MaskedAutoPGD(EvasionAttack):
    """AutoPGD (Croce & Hein 2020, https://arxiv.org/abs/2003.01690) confined to a per-sample patch mask.

    Runs ART's ``AutoProjectedGradientDescent`` on chunks of ``batch_size`` samples, each with a
    :class:`RestrictToMask` preprocessor placed first among the estimator's defences, and restores the
    estimator's defences afterwards. Restarts are run here (on the samples not yet fooled) because ART's own
    restarts re-select samples and would break the pairing of images and masks.

    The estimator must use only PyTorch preprocessing (ART then differentiates the whole chain) and is
    attacked with its own loss (``loss_type=None``): ART rebuilds a plain classifier for other loss types,
    which would drop the defence.
    """

    attack_params = EvasionAttack.attack_params + [
        "eps", "eps_step", "max_iter", "nb_random_init", "targeted", "batch_size", "verbose",
    ]
    _estimator_requirements = (BaseEstimator, LossGradientsMixin, ClassifierMixin)

    def __init__(
        self, estimator, eps: float = 1.0, eps_step: float = 0.25, max_iter: int = 100, nb_random_init: int = 1,
        targeted: bool = False, batch_size: int = 64, verbose: bool = True,
    ) -> None:
        super().__init__(estimator=estimator)
        self.eps, self.eps_step, self.max_iter = eps, eps_step, max_iter
        self.nb_random_init, self.targeted = nb_random_init, targeted
        self.batch_size, self.verbose = batch_size, verbose
        self._check_params()

    def _check_params(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if not 0 < self.eps_step:
            raise ValueError(f"eps_step must be positive, got {self.eps_step}")
        if self.max_iter < 1 or self.nb_random_init < 1:
            raise ValueError("max_iter and nb_random_init must be at least 1")
        if not 1 <= self.batch_size <= ART_PREDICT_BATCH:
            # AutoPGD calls predict() with ART's default batch of 128: a larger chunk would reach the
            # preprocessor in pieces that no longer match the masks it holds.
            raise ValueError(f"batch_size must be in [1, {ART_PREDICT_BATCH}], got {self.batch_size}")
        if not all(isinstance(p, PreprocessorPyTorch) for p in (self.estimator.preprocessing_defences or [])):
            raise ValueError("MaskedAutoPGD needs an estimator whose preprocessing defences are all PyTorch ones")

    def _chunk(self, x: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
        estimator = self.estimator
        own_defences = list(estimator.preprocessing_defences or [])
        restrict = RestrictToMask(x, mask, device_type="cpu" if estimator.device.type == "cpu" else "gpu")
        # Built before the preprocessor goes in: its constructor probes the estimator with a single sample.
        attack = AutoProjectedGradientDescent(
            estimator, norm=np.inf, eps=self.eps, eps_step=self.eps_step, max_iter=self.max_iter,
            targeted=self.targeted, nb_random_init=1, batch_size=len(x), loss_type=None, verbose=False,
        )
        estimator.set_params(preprocessing_defences=[restrict, *own_defences])
        try:
            x_adv = attack.generate(x, y=np.eye(estimator.nb_classes, dtype=np.float32)[labels], mask=mask)
        finally:
            estimator.set_params(preprocessing_defences=own_defences or None)
        return np.where(mask > 0, np.clip(x_adv, 0, 1), x).astype(x.dtype)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        """Attack ``x`` inside ``mask`` (``x``-shaped, 1 on the patch); the result equals ``x`` outside it."""
        x = check_estimator_inputs(self.estimator, x)
        if mask is None:
            raise ValueError("mask is required: MaskedAutoPGD perturbs only the patch pixels")
        mask = _check_masks(mask, x)
        labels = _labels_for(self.estimator, x, y, self.batch_size)
        x_adv = x.copy()
        for _ in range(self.nb_random_init):
            predictions = self.estimator.predict(x_adv, batch_size=self.batch_size).argmax(1)
            todo = np.flatnonzero(predictions != labels if self.targeted else predictions == labels)
            chunks = range(0, len(todo), self.batch_size)
            for start in tqdm(chunks, desc="masked AutoPGD", disable=not self.verbose):
                index = todo[start : start + self.batch_size]
                # ART's AutoPGD skips samples already misclassified; keep only the ones it will attack so that
                # the batch it differentiates is exactly the chunk the preprocessor holds.
                still = self.estimator.predict(x[index], batch_size=self.batch_size).argmax(1)
                index = index[still != labels[index] if self.targeted else still == labels[index]]
                if len(index):
                    x_adv[index] = self._chunk(x[index], labels[index], mask[index])
        return x_adv
