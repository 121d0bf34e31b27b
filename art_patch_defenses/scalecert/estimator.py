"""ScaleCert as an ART certification estimator: ``PyTorchScaleCert(ScaleCertMixin, PyTorchClassifier)``.

The wrapped model runs with the SIN mask after its superficial layer (:mod:`.sin`); that sparse model is what
``predict_base`` and ART's gradients see, so white-box attacks attack the defended network. ``detect`` is
Algorithm 1, ``certify`` is Algorithm 2; both classify the occluded copies for the merged windows that meet the
image's candidate region R, in batches. An occluded copy is computed from the unoccluded image's superficial
features with those the window reaches excluded, which is exactly what occluding its pixels gives (see
:mod:`.sin`) and keeps every copy on the same numbers as the image. ``predict`` is the detector: the sparse model's
scores plus the protocol's abstain column, set where it alerts (:mod:`art_patch_defenses.certification`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from tqdm.auto import tqdm

from art_patch_defenses.certification import (
    DETECTION,
    CertificationResult,
    CertifierMixin,
    base_classifier,
    with_abstain_column,
)
from art_patch_defenses.geometry import affected_features, back_project
from art_patch_defenses.scalecert.detection import certify_from_labels, detect_from_labels
from art_patch_defenses.scalecert.sin import ScaleCertNet, layer_after_first_convolution
from art_patch_defenses.scalecert.windows import OcclusionWindows, occlusion_windows


@dataclass
class Detection:
    """Per-sample outcome of ScaleCert's detector (Algorithm 1) and what it ran.

    :param prediction: the detector's label, -1 where it alerts.
    :param alert: True where it alerts.
    :param location: ``(N, 2)`` top-left of the suspected patch placement, -1 where no alert.
    :param base_prediction: the sparse model's label on the unoccluded image (``y*``).
    :param window_labels: ``(N, W)`` labels of the occluded copies (``y*`` for windows that were not run).
    :param evaluated: ``(N, W)`` which windows met the candidate region and were run.
    :param winners: ``(N, h, w)`` the SIN winners of the unoccluded image; ``(N, 2, h, w)`` with ``flip_average``
        (the image's, then its mirror's, in the mirror's coordinates).
    """

    prediction: np.ndarray
    alert: np.ndarray
    location: np.ndarray
    base_prediction: np.ndarray
    window_labels: np.ndarray
    evaluated: np.ndarray
    winners: np.ndarray

    def __len__(self) -> int:
        return len(self.prediction)


class ScaleCertMixin(CertifierMixin):
    """ScaleCert's detection and certification on top of an estimator that classifies occluded copies.

    Certified detection (:data:`~art_patch_defenses.certification.DETECTION`): for a certified sample, a patch of
    ``patch_size`` pixels anywhere leaves the prediction right or raises an alert. ``predict`` returns the extra
    abstain column (1 where the detector alerts).
    """

    certificate_kind = DETECTION
    abstains = True
    certify_gives_prediction = True
    certify_batch_size = 256

    def _classify(self, x: np.ndarray, excluded: np.ndarray | None = None, superficial: torch.Tensor | None = None
                  ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Labels ``(N,)``, SIN winners ``(N, h, w)`` and superficial features ``(N, C, h, w)`` of images ``x``
        (pixel space), with the features in ``excluded`` ``(N, h, w)`` kept from winning and, if given,
        ``superficial`` in place of the layer's output."""
        raise NotImplementedError

    def windows_for(self, patch_size: int | None = None) -> OcclusionWindows:
        raise NotImplementedError

    def window_reach(self, windows: OcclusionWindows) -> np.ndarray:
        """The superficial features each window excludes, as ``excluded`` takes them: ``windows.features``
        ``(W, h, w)``; with ``flip_average`` ``(W, 2, h, w)``, those and the features the mirrored window reaches in
        the mirrored view."""
        raise NotImplementedError

    def detect(self, x: np.ndarray, batch_size: int = 256, verbose: bool = False) -> Detection:
        """Algorithm 1 for a patch of the configured ``patch_size``."""
        x = self.check_inputs(x)
        windows = self.windows_for()
        reach = self.window_reach(windows)
        base, winners, evaluated, window_labels = [], [], [], []
        for start in tqdm(range(0, len(x), batch_size), desc="detect (ScaleCert)", disable=not verbose):
            images = x[start : start + batch_size]
            labels, kept, features = self._classify(images)
            run = meets_region(kept, reach)  # the others keep y* (see .sin)
            copies = np.repeat(labels[:, None], len(windows.boxes), axis=1)
            rows, boxes = np.nonzero(run)
            for chunk in range(0, len(rows), batch_size):
                i, w = rows[chunk : chunk + batch_size], boxes[chunk : chunk + batch_size]
                copies[i, w] = self._classify(images[i], reach[w], features[i])[0]
            base.append(labels)
            winners.append(kept)
            evaluated.append(run)
            window_labels.append(copies)
        base_prediction, winners = np.concatenate(base), np.concatenate(winners)
        evaluated, window_labels = np.concatenate(evaluated), np.concatenate(window_labels)
        prediction, alert, placement = detect_from_labels(base_prediction, window_labels, evaluated,
                                                          windows.contains, self.nb_classes)
        location = np.full((len(x), 2), -1)
        location[placement >= 0] = windows.placements[placement[placement >= 0]]
        for i in np.flatnonzero(alert & (placement < 0)):
            location[i] = windows.boxes[np.argmax(window_labels[i] != base_prediction[i]), [0, 2]]
        return Detection(prediction=prediction, alert=alert, location=location, base_prediction=base_prediction,
                         window_labels=window_labels, evaluated=evaluated, winners=winners)

    def candidate_windows(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """How many merged windows meet each image's candidate region R: the occluded copies ``detect`` and
        ``certify`` run (one forward pass per image to find out)."""
        x = self.check_inputs(x)
        reach = self.window_reach(self.windows_for())
        return np.concatenate([meets_region(self._classify(x[start : start + batch_size])[1], reach).sum(1)
                               for start in range(0, len(x), batch_size)])

    def _certify(self, x: np.ndarray, y: np.ndarray | None, batch_size: int, seed: int | None, verbose: bool,
                 **kwargs: Any) -> CertificationResult:
        """Algorithm 2: certified iff the sparse model and every occluded copy that meets the candidate region
        say ``y`` (default: the sparse model's own prediction); then no patch of the configured size anywhere
        can make the detector return another label without an alert (Theorem 1). ``prediction`` is the
        detector's on ``x`` (-1 = alert)."""
        if kwargs:
            raise ValueError(f"unknown certify keyword(s) {sorted(kwargs)}")
        found = self.detect(x, batch_size, verbose)
        labels = found.base_prediction if y is None else y
        certified = certify_from_labels(found.base_prediction, found.window_labels, labels)
        return CertificationResult(prediction=found.prediction, certified=certified, alert=found.alert,
                                   location=found.location)

    def attack_surrogate(self):
        """The sparse model (SIN inside) as a plain ART classifier: what the detector classifies."""
        return base_classifier(self)

    def candidate_region(self, winners: np.ndarray) -> np.ndarray:
        """Input pixels ``(N, H, W)`` that the SIN ``winners`` ``(N, h, w)`` see: the candidate region R. With
        ``flip_average`` (winners ``(N, 2, h, w)``): what either view's winners see, in the image's coordinates."""
        image_hw = tuple(self.input_shape[-2:])
        if winners.ndim == 3:
            return back_project(winners, self.model.chain, image_hw)
        return (back_project(winners[:, 0], self.model.chain, image_hw)
                | back_project(winners[:, 1], self.model.chain, image_hw)[..., ::-1])


class PyTorchScaleCert(ScaleCertMixin, PyTorchClassifier):
    """ScaleCert (Han et al., NeurIPS 2021, https://proceedings.neurips.cc/paper/2021/hash/
    5cf9a1ec5a26e3e6ec4ed8bbaf2b1fa4-Abstract.html) as an ART PyTorch classifier.

    Certified detection: for a certified image, any patch of ``patch_size`` pixels anywhere either leaves the
    prediction right or raises an alert.

    :param model: the classifier (fine-tuned with the SIN mask: :mod:`.training`); it is wrapped in
        :class:`.ScaleCertNet`, a forward hook on ``superficial_layer``.
    :param superficial_layer: name of the module whose output is sparsified; default: the module that runs right
        after the first convolution (``bn1`` of a ResNet). It must be reached through a chain of layers.
    :param top_k: fraction of the superficial layer's spatial positions kept (the paper's k).
    :param patch_size: side in pixels of the patch detection and certification are set for.
    :param r: occluding windows have side ``patch_size + r - 1`` (paper: 3).
    :param tau: overlap above which neighbouring windows are merged (paper: 0.3).
    :param flip_average: score every image and every occluded copy together with its mirror (the mean of the two
        log-softmax outputs; not in the paper). The certificate still holds: the mirrored view excludes the
        features the mirrored window reaches, and a window counts as meeting R if it meets either view's. Twice
        the cost.
    Occluded pixels need no fill value: every feature they reach is excluded (see :mod:`.sin`).
    Other arguments are ``PyTorchClassifier``'s.
    """

    certifier_params = ["top_k", "patch_size", "r", "tau", "flip_average"]
    estimator_params = PyTorchClassifier.estimator_params + certifier_params

    def __init__(self, model: torch.nn.Module, loss, input_shape: tuple[int, ...], nb_classes: int,
                 superficial_layer: str | None = None, top_k: float = 0.1, patch_size: int = 5, r: int = 3,
                 tau: float = 0.3, flip_average: bool = False, **kwargs: Any) -> None:
        if isinstance(model, ScaleCertNet):  # ART's clone_for_refitting passes the wrapped model back
            net = model
            superficial_layer = net.superficial_layer
        else:
            superficial_layer = superficial_layer or layer_after_first_convolution(model, tuple(input_shape))
            net = ScaleCertNet(model, superficial_layer, top_k, tuple(input_shape), flip_average)
        super().__init__(net, loss, input_shape, nb_classes, **kwargs)
        self.superficial_layer = superficial_layer
        self.top_k, self.patch_size, self.r, self.tau = top_k, patch_size, r, tau
        self.flip_average = flip_average
        self._windows: dict[tuple[int, int, float], OcclusionWindows] = {}
        self._mirrored_reach: dict[int, tuple[OcclusionWindows, np.ndarray]] = {}
        self._check_certifier_params()

    @property
    def top_k(self) -> float:
        return self.model.sin.top_k

    @top_k.setter
    def top_k(self, value: float) -> None:
        self.model.sin.top_k = value

    @property
    def flip_average(self) -> bool:
        return self.model.flip_average

    @flip_average.setter
    def flip_average(self, value: bool) -> None:
        self.model.flip_average = value

    def _check_certifier_params(self) -> None:
        if not 0.0 < self.top_k <= 1.0:
            raise ValueError(f"top_k must be a fraction in (0, 1], got {self.top_k}")
        self._check_patch_size(self.patch_size, min(self._image_hw()))
        if not isinstance(self.r, (int, np.integer)) or self.r < 1:
            raise ValueError(f"r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"tau must be in [0, 1), got {self.tau}")
        if not isinstance(self.flip_average, (bool, np.bool_)):
            raise ValueError(f"flip_average must be True or False, got {self.flip_average!r}")

    @staticmethod
    def _check_patch_size(patch_size: Any, side: int) -> None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or not (
                1 <= patch_size <= side):
            raise ValueError(f"patch_size must be an integer in [1, {side}] pixels, got {patch_size!r}")

    def _image_hw(self) -> tuple[int, int]:
        shape = self.input_shape
        return tuple(shape[1:3]) if self.channels_first else tuple(shape[0:2])

    def windows_for(self, patch_size: int | None = None) -> OcclusionWindows:
        """The merged occluding windows for ``patch_size`` (default: the estimator's), cached."""
        patch_size = self.patch_size if patch_size is None else patch_size
        self._check_patch_size(patch_size, min(self._image_hw()))
        key = (int(patch_size), int(self.r), float(self.tau))
        if key not in self._windows:
            self._windows[key] = occlusion_windows(self._image_hw(), (patch_size, patch_size), self.r, self.tau,
                                                   self.model.chain, self.model.map_hw)
        return self._windows[key]

    def window_reach(self, windows: OcclusionWindows) -> np.ndarray:
        if not self.flip_average:
            return windows.features
        if id(windows) not in self._mirrored_reach:  # once per cached set of windows (kept, so its id stays unique)
            mirrored = affected_features(windows.pixels[..., ::-1], self.model.chain, self.model.map_hw)
            self._mirrored_reach[id(windows)] = (windows, np.stack([windows.features, mirrored], axis=1))
        return self._mirrored_reach[id(windows)][1]

    def _classify(self, x: np.ndarray, excluded: np.ndarray | None = None, superficial: torch.Tensor | None = None
                  ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        net = self.model
        net.eval()
        batch, _ = self._apply_preprocessing(x.astype(np.float32), y=None, fit=False)
        with torch.no_grad():
            mask = None if excluded is None else torch.from_numpy(np.ascontiguousarray(excluded)).to(self.device)
            logits = net(torch.as_tensor(batch, device=self.device), mask, superficial)
        return logits.argmax(1).cpu().numpy(), net.last_winners.cpu().numpy(), net.last_features

    def predict(self, x: np.ndarray, batch_size: int = 256, **kwargs: Any) -> np.ndarray:
        """The detector: the sparse model's class scores plus the abstain column, ``[0, ..., 0, 1]`` where
        ScaleCert alerts."""
        x = self.check_inputs(x)
        scores = PyTorchClassifier.predict(self, x, batch_size=batch_size, **kwargs)
        alert = self.detect(x, batch_size=batch_size, verbose=kwargs.get("verbose", False)).alert
        return with_abstain_column(scores, alert)

    def predict_base(self, x: np.ndarray, batch_size: int = 256, **kwargs: Any) -> np.ndarray:
        """The sparse model's class scores (SIN applied, no occlusion, no detection)."""
        return PyTorchClassifier.predict(self, self.check_inputs(x), batch_size=batch_size, **kwargs)


def meets_region(winners: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """``(N, W)``: window ``w`` meets image ``n``'s candidate region R, i.e. occluding it excludes a winner.

    ``winners`` ``(N, ...)`` and ``reach`` ``(W, ...)`` have the same trailing shape (``(h, w)``, or ``(2, h, w)``
    with a view axis: then a window meets R if it excludes a winner in either view)."""
    reach = reach.reshape(len(reach), -1).astype(np.float32)
    return winners.reshape(len(winners), -1).astype(np.float32) @ reach.T > 0
