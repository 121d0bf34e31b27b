"""PatchCleanser as an ART certification estimator: ``PyTorchPatchCleanser(PatchCleanserMixin, PyTorchClassifier)``.

Xiang, Mahloujifar, Mittal, "PatchCleanser: Certifiably Robust Defense against Adversarial Patches for Any Image
Classifier", USENIX Security 2022 (https://arxiv.org/abs/2108.09135). Certified recovery against one square patch
of a given size anywhere, for any base classifier: the R-covering mask set (:func:`geometry.mask_set`) puts every
patch placement inside one mask; ``predict`` is double masking, ``certify`` checks every one- and two-mask
prediction (Theorem 1). Masked pixels take ``fill_value`` (default: the normalisation mean, i.e. zero in the
normalised input, as the reference code does). ART's gradients are the base classifier's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from tqdm.auto import tqdm

from art_patch_defenses.certification import RECOVERY, CertificationResult, CertifierMixin, base_classifier
from art_patch_defenses.geometry import mask_set
from art_patch_defenses.patchcleanser.double_masking import disagreeing_masks, double_masking


class PatchCleanserMixin(CertifierMixin):
    """Double masking and its certificate on top of a classifier's base ``predict``.

    Certified recovery (:data:`~art_patch_defenses.certification.RECOVERY`): no patch of ``patch_size`` pixels
    anywhere changes the double-masking label of a certified sample.
    """

    certificate_kind = RECOVERY
    certify_gives_prediction = True
    certify_batch_size = 512
    patch_size: int
    masks_per_axis: int

    def _base_labels(self, x: np.ndarray, batch_size: int, **kwargs: Any) -> np.ndarray:
        """The base classifier's labels on NCHW images ``x``."""
        raise NotImplementedError

    def _fill(self, channels: int) -> np.ndarray:
        """``(C, 1, 1)`` pixel values of masked pixels."""
        raise NotImplementedError

    def masks(self) -> np.ndarray:
        """The R-covering mask set ``(M, H, W)`` of the configured patch size."""
        return mask_set(self._image_hw(), int(self.patch_size), self.masks_per_axis)

    def _labels_under(self, image: np.ndarray, masks: np.ndarray, batch_size: int, **kwargs: Any) -> np.ndarray:
        """Base labels of one NCHW ``image`` under each of ``masks`` ``(P, H, W)``."""
        fill = self._fill(image.shape[0])
        labels = [self._base_labels(np.where(masks[start : start + batch_size, None], fill, image[None]),
                                    batch_size, **kwargs)
                  for start in range(0, len(masks), batch_size)]
        return np.concatenate(labels)

    def _nchw(self, x: np.ndarray) -> np.ndarray:
        x = self.check_inputs(x)
        return x if self.channels_first else x.transpose(0, 3, 1, 2)

    def prediction_map(self, x: np.ndarray, batch_size: int = 512, verbose: bool = False) -> np.ndarray:
        """``(N, M, M)`` labels with every pair of masks (diagonal: one mask); only the upper triangle is run."""
        x = self._nchw(x)
        masks = self.masks()
        first, second = np.triu_indices(len(masks))
        pairs = masks[first] | masks[second]
        out = np.empty((len(x), len(masks), len(masks)), dtype=np.int64)
        for n in tqdm(range(len(x)), desc="prediction map (PatchCleanser)", disable=not verbose):
            labels = self._labels_under(x[n], pairs, batch_size)
            out[n, first, second] = labels
            out[n, second, first] = labels
        return out

    def _one_mask_labels(self, x: np.ndarray, masks: np.ndarray, batch_size: int, verbose: bool,
                         **kwargs: Any) -> np.ndarray:
        """``(N, M)`` base labels of NCHW images ``x`` under each one of ``masks``."""
        return np.stack([self._labels_under(image, masks, batch_size, **kwargs)
                         for image in tqdm(x, desc="one-mask predictions (PatchCleanser)", disable=not verbose)])

    def _double_masking(self, x: np.ndarray, masks: np.ndarray, one_mask: np.ndarray, batch_size: int,
                        **kwargs: Any) -> np.ndarray:
        """Algorithm 1 given the one-mask labels: two-mask rows are run only for disagreeing masks."""
        rows = {(n, i): self._labels_under(x[n], masks[i] | masks, batch_size, **kwargs)
                for n, i in disagreeing_masks(one_mask)}
        return double_masking(one_mask, rows)

    def robust_labels(self, x: np.ndarray, batch_size: int = 512, verbose: bool = False,
                      **kwargs: Any) -> np.ndarray:
        """Double masking (Algorithm 1): one-mask predictions first, two-mask rows only for disagreeing masks.
        ``kwargs`` (e.g. ``training_mode``) go to the base classifier's ``predict``."""
        x = self._nchw(x)
        masks = self.masks()
        return self._double_masking(x, masks, self._one_mask_labels(x, masks, batch_size, verbose, **kwargs),
                                    batch_size, **kwargs)

    def _certify(self, x: np.ndarray, y: np.ndarray | None, batch_size: int, seed: int | None, verbose: bool,
                 **kwargs: Any) -> CertificationResult:
        """Theorem 1: certified iff every one- and two-mask prediction is ``y`` (default: the double-masking
        label); then no patch of the configured size anywhere changes the double-masking output.

        The answer of reading the whole :meth:`prediction_map`, at less cost: a one-mask label other than the
        target already rules an image out, and an image's two-mask pairs stop at the first batch holding another
        label, so only certified images pay for every pair."""
        if kwargs:
            raise ValueError(f"unknown certify keyword(s) {sorted(kwargs)}")
        x = self._nchw(x)
        masks = self.masks()
        one_mask = self._one_mask_labels(x, masks, batch_size, verbose)
        prediction = self._double_masking(x, masks, one_mask, batch_size)
        target = prediction if y is None else y
        certified = np.all(one_mask == target[:, None], axis=1)
        first, second = np.triu_indices(len(masks), k=1)
        for n in tqdm(np.flatnonzero(certified), desc="two-mask pairs (PatchCleanser)", disable=not verbose):
            for start in range(0, len(first), batch_size):
                pairs = masks[first[start : start + batch_size]] | masks[second[start : start + batch_size]]
                if np.any(self._labels_under(x[n], pairs, batch_size) != target[n]):
                    certified[n] = False
                    break
        return CertificationResult(prediction=prediction, certified=certified)

    def attack_surrogate(self):
        """The base classifier (double masking has no gradient; ART's gradients here are the base's too)."""
        return base_classifier(self)


@contextmanager
def _channels_last_inputs(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, 4-d inputs of ``module`` are laid out channels-last (NHWC strides, same NCHW shape and
    values): CPU convolutions run faster so, and the layout carries through the convolutional layers."""

    def to_channels_last(_module: torch.nn.Module, args: tuple) -> tuple:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        return args

    handle = module.register_forward_pre_hook(to_channels_last)
    try:
        yield
    finally:
        handle.remove()


class PyTorchPatchCleanser(PatchCleanserMixin, PyTorchClassifier):
    """PatchCleanser (Xiang et al., USENIX Security 2022) around any PyTorch classifier, as an ART classifier.

    :param patch_size: side in pixels of the patch the mask set covers.
    :param masks_per_axis: k, masks per image axis (k x k masks; the paper uses 6).
    :param fill_value: pixel value of masked pixels in [0, 1]; None: the normalisation mean per channel (zero in
        the normalised input).
    :param channels_last: for an NCHW model, pass the masked copies (thousands per certified image) to the base
        classifier in channels-last memory layout (same shape and values): CNNs run faster so on the CPU
        (``benchmarks/patchcleanser_certify_speed.py``), with the same labels up to float rounding. Set False for
        a model whose forward needs NCHW-contiguous tensors (e.g. ``.view`` on a feature map).
    Other arguments are ``PyTorchClassifier``'s. ``predict`` returns one-hot rows of the double-masking label;
    ``predict_base`` and ART's gradients are the base classifier's.
    """

    certifier_params = ["patch_size", "masks_per_axis", "fill_value", "channels_last"]
    estimator_params = PyTorchClassifier.estimator_params + certifier_params

    def __init__(self, model, loss, input_shape: tuple[int, ...], nb_classes: int, patch_size: int = 5,
                 masks_per_axis: int = 6, fill_value: float | None = None, channels_last: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(model, loss, input_shape, nb_classes, **kwargs)
        self.patch_size, self.masks_per_axis, self.fill_value = patch_size, masks_per_axis, fill_value
        self.channels_last = channels_last
        self._check_certifier_params()

    def _image_hw(self) -> tuple[int, int]:
        shape = self.input_shape
        return tuple(shape[1:3]) if self.channels_first else tuple(shape[0:2])

    def _check_certifier_params(self) -> None:
        side = min(self._image_hw())
        if not isinstance(self.patch_size, (int, np.integer)) or isinstance(self.patch_size, bool) or not (
                1 <= self.patch_size <= side):
            raise ValueError(f"patch_size must be an integer in [1, {side}] pixels, got {self.patch_size!r}")
        if not isinstance(self.masks_per_axis, (int, np.integer)) or self.masks_per_axis < 1:
            raise ValueError(f"masks_per_axis must be a positive integer, got {self.masks_per_axis!r}")
        if self.fill_value is not None and not 0.0 <= self.fill_value <= 1.0:
            raise ValueError(f"fill_value must be None or a pixel value in [0, 1], got {self.fill_value}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be True or False, got {self.channels_last!r}")

    def _fill(self, channels: int) -> np.ndarray:
        if self.fill_value is not None:
            return np.full((channels, 1, 1), self.fill_value, dtype=np.float32)
        mean = getattr(self.preprocessing, "mean", None)
        if mean is None:
            return np.zeros((channels, 1, 1), dtype=np.float32)
        return np.broadcast_to(np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1), (channels, 1, 1)).copy()

    def _base_labels(self, x: np.ndarray, batch_size: int, **kwargs: Any) -> np.ndarray:
        images = x if self.channels_first else x.transpose(0, 2, 3, 1)
        if not (self.channels_last and self.channels_first):  # an NHWC model lays out its own input
            return PyTorchClassifier.predict(self, images, batch_size=batch_size, **kwargs).argmax(1)
        with _channels_last_inputs(self._model):
            return PyTorchClassifier.predict(self, images, batch_size=batch_size, **kwargs).argmax(1)

    def predict(self, x: np.ndarray, batch_size: int = 512, training_mode: bool = False, verbose: bool = False,
                **kwargs: Any) -> np.ndarray:
        """Double masking: one-hot rows of the robust label. ``training_mode`` and ``kwargs`` go to the base
        classifier's ``predict``."""
        labels = self.robust_labels(x, batch_size=batch_size, verbose=verbose, training_mode=training_mode,
                                    **kwargs)
        return np.eye(self.nb_classes, dtype=np.float32)[labels]

    def predict_base(self, x: np.ndarray, batch_size: int = 256, **kwargs: Any) -> np.ndarray:
        """The base classifier's class scores (no masks)."""
        return PyTorchClassifier.predict(self, self.check_inputs(x), batch_size=batch_size, **kwargs)
