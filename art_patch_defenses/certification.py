"""The certifier protocol every certifier of this package follows, and the result its ``certify`` returns.

A certifier is an ART ``PyTorchClassifier`` (or, for ART's own de-randomized smoothing, its estimator) with
:class:`CertifierMixin` in front, in the shape of ART's certification estimators
(``art.estimators.certification``): an algorithm mixin plus the framework estimator. The protocol:

- ``certify(x, y=None, *, patch_size=None, batch_size=..., seed=None, verbose=False) -> CertificationResult``
  certifies *the object's own configured defence*: ``patch_size`` may only repeat the configured one, so a
  certificate always speaks of the ``predict`` in hand. Another patch size is another defence:
  :meth:`CertifierMixin.for_patch_size` builds a separately configured copy.
- ``eval_and_certify(x, y, size_to_certify=None, batch_size=..., verbose=False)`` has ART's name and argument
  order and returns plain floats: (clean accuracy of the defended prediction, certified accuracy), both fractions
  (ART's de-randomized smoothing returns counts as tensors).
- ``predict_base(x)`` gives the undefended part's class scores; ``attack_surrogate()`` the differentiable ART
  classifier a white-box attack should follow; ``violates(labels, y)`` says when an attacked output contradicts
  the certificate; ``certificate_kind`` says what the certificate means (:data:`CERTIFICATE_KINDS`).

Abstain and alert are explicit. A certifier that can abstain (``abstains = True``) returns ``nb_classes + 1``
columns from ``predict``: the last one is 1 where it abstains or alerts, and every other column is 0 there. An
arg-max then never reads an abstention as a class: ART's attacks count it as "not the label" (an untargeted attack
succeeded, a targeted one did not), which is how every accuracy of this package counts it too.
:func:`predict_labels` turns such scores into labels with :data:`ABSTAIN` (-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from art_patch_defenses.validation import CheckedInputsMixin, check_labels

#: The label of an abstention or an alert.
ABSTAIN = -1

#: Certified recovery: no patch of the certified size anywhere changes the prediction.
RECOVERY = "recovery"
#: Certified detection: a patch of the certified size anywhere leaves the prediction right or raises an alert.
DETECTION = "detection"
#: An L2 radius for changes inside a region (MRS): not a patch certificate by itself.
REGION_L2 = "region-L2"
CERTIFICATE_KINDS = (RECOVERY, DETECTION, REGION_L2)


@dataclass
class CertificationResult:
    """Per-sample outcome of a certifier's ``certify``.

    :param prediction: the defended prediction, :data:`ABSTAIN` (-1) for abstain / alert.
    :param certified: True where the certificate holds for ``y`` (when ``certify`` got labels: the prediction is
        then ``y`` too) or for the prediction (without labels).
    :param kind: what the certificate means, one of :data:`CERTIFICATE_KINDS`.
    :param patch_size: side in pixels of the patch the certificate is for (MRS: its localisation block).
    :param radius: certified radius where the method has one (MRS: L2, in [0, 1] pixel units).
    :param alert: True where a detector raised an alert (certified detection).
    :param location: suspected patch location ``(row, col)`` per sample, -1 where none.
    """

    prediction: np.ndarray
    certified: np.ndarray
    kind: str = RECOVERY
    patch_size: int | None = None
    radius: np.ndarray | None = None
    alert: np.ndarray | None = None
    location: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prediction)


def with_abstain_column(scores: np.ndarray, abstain: np.ndarray) -> np.ndarray:
    """``(N, C)`` class scores plus the abstain column: ``(N, C + 1)``, rows where ``abstain`` is True become
    ``[0, ..., 0, 1]``. Elsewhere the abstain column is 0, or 1 below the row's best score where every score is
    negative (logits or log-probabilities), so that the argmax never reads a row that does not abstain as an
    abstention."""
    out = np.zeros((len(scores), scores.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = scores
    best = out[:, :-1].max(axis=1)
    out[:, -1] = np.where(best < 0, best - 1, 0)
    out[abstain] = 0.0
    out[abstain, -1] = 1.0
    return out


def predict_labels(scores: np.ndarray, nb_classes: int) -> np.ndarray:
    """Labels from class scores with :data:`ABSTAIN` (-1) where a certifier abstains: the abstain column
    (``scores.shape[1] == nb_classes + 1``) or an all-zero row (ART's randomized-smoothing convention)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] not in (nb_classes, nb_classes + 1):
        raise ValueError(f"scores must be (N, {nb_classes}) or (N, {nb_classes + 1}), got shape {scores.shape}")
    labels = scores.argmax(axis=1)
    abstain = (labels == nb_classes) | ~np.any(scores != 0, axis=1)
    return np.where(abstain, ABSTAIN, labels)


def base_classifier(estimator, model=None):
    """A plain ART ``PyTorchClassifier`` with ``estimator``'s model (or ``model``), loss, shapes, clip values,
    normalisation and defences: the network a certifier runs, without the certifier's own ``predict``."""
    from art.estimators.classification import PyTorchClassifier

    params = {key: value for key, value in estimator.get_params().items()
              if key in PyTorchClassifier.estimator_params and key not in ("use_amp", "opt_level", "loss_scale")}
    if model is not None:
        params["model"] = model
    return PyTorchClassifier(**params)


class CertifierMixin(CheckedInputsMixin):
    """The certifier protocol, written once: the input contract (:class:`CheckedInputsMixin`), ``certify``,
    ``eval_and_certify``, ``set_params`` with rollback. A certifier implements :meth:`_certify`,
    :meth:`predict_base`, :meth:`attack_surrogate` and :meth:`_check_certifier_params`, and sets
    :attr:`certificate_kind`, :attr:`certifier_params` and, if its ``predict`` can abstain, :attr:`abstains`.
    """

    #: What the certificate means: one of :data:`CERTIFICATE_KINDS`.
    certificate_kind: str = RECOVERY
    #: The parameters of the defence itself (validated by :meth:`_check_certifier_params`).
    certifier_params: list[str] = []
    #: Whether ``predict`` returns the extra abstain column.
    abstains: bool = False
    #: Default batch size of ``certify``.
    certify_batch_size: int = 128
    #: True where ``certify(x).prediction`` is by construction ``predict_labels(predict(x))`` on every sample (a
    #: deterministic certifier that certifies its own prediction): an evaluation then reads the clean predictions
    #: from ``certify`` instead of paying for the defence twice.
    certify_gives_prediction: bool = False

    # --- what each certifier implements --------------------------------------------------------------------

    def _certify(self, x: np.ndarray, y: np.ndarray | None, batch_size: int, seed: int | None, verbose: bool,
                 **kwargs: Any) -> CertificationResult:
        """The method's certificate for checked float32 images ``x`` in the estimator's layout and integer
        labels ``y`` (or None)."""
        raise NotImplementedError

    def predict_base(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> np.ndarray:
        """Class scores ``(N, nb_classes)`` of the undefended part."""
        raise NotImplementedError

    def attack_surrogate(self):
        """The differentiable ART classifier a white-box attack on this defence should follow."""
        raise NotImplementedError

    def _check_certifier_params(self) -> None:
        raise NotImplementedError

    # --- the protocol --------------------------------------------------------------------------------------

    def _own_patch_size(self, patch_size: Any, argument: str = "patch_size") -> None:
        own = getattr(self, "patch_size", None)
        if patch_size is not None and patch_size != own:
            raise ValueError(
                f"{argument}={patch_size!r}, but this {type(self).__name__} runs its defence for {own}-pixel patches; "
                f"a certificate for another size would not speak of this object's predict. Use "
                f"for_patch_size({patch_size!r}) to get a separately configured copy.")

    def certify(self, x: np.ndarray, y: np.ndarray | None = None, *, patch_size: int | None = None,
                batch_size: int | None = None, seed: int | None = None, verbose: bool = False,
                **kwargs: Any) -> CertificationResult:
        """Certify this object's own defence on ``x``.

        :param x: images in the estimator's layout and ``clip_values`` (float64 is cast to float32).
        :param y: labels (indices or one-hot): ``certified`` then also requires the prediction to be ``y``;
            without labels, the certificate is for the prediction itself.
        :param patch_size: may only repeat the configured patch size (see :meth:`for_patch_size`).
        :param seed: fixes every random choice of a randomised certifier (default: its ``seed`` parameter).
        :return: :class:`CertificationResult`.
        """
        if y is not None and np.ndim(y) == 0:
            raise ValueError(
                f"certify(x, y=...) takes labels as its second argument, got the scalar {y!r}; ART's "
                "randomized-smoothing certify(x, n) is not this protocol: a certifier's sample count is its own "
                "parameter (set_params)")
        self._own_patch_size(patch_size)
        x = self.check_inputs(x)
        labels = None if y is None else check_labels(y, len(x), self.nb_classes)
        batch_size = self.certify_batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        result = self._certify(x, labels, int(batch_size), seed, verbose, **kwargs)
        result.kind, result.patch_size = self.certificate_kind, getattr(self, "patch_size", None)
        return result

    def eval_and_certify(self, x: np.ndarray, y: np.ndarray, size_to_certify: int | None = None,
                         batch_size: int | None = None, verbose: bool = False) -> tuple[float, float]:
        """ART's ``eval_and_certify``: (accuracy of the defended prediction, certified accuracy) on ``x``, as
        fractions. An abstention or alert is never right. ``size_to_certify`` may only repeat the configured
        patch size."""
        self._own_patch_size(size_to_certify, "size_to_certify")
        labels = check_labels(y, len(x), self.nb_classes)
        result = self.certify(x, labels, batch_size=batch_size, verbose=verbose)
        return float(np.mean(result.prediction == labels)), float(np.mean(result.certified))

    def predict_labels(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> np.ndarray:
        """The defended labels, :data:`ABSTAIN` (-1) where it abstains or alerts; ``kwargs`` go to ``predict``
        (a region-L2 certifier takes ``mask=`` and ``seed=``)."""
        return predict_labels(self.predict(x, batch_size=batch_size, **kwargs), self.nb_classes)

    def violates(self, labels: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per sample: does the defended output ``labels`` (from :meth:`predict_labels` on an attacked, certified
        sample) contradict the certificate for ``y``? Recovery: any other label, an abstention included.
        Detection and region-L2: another class (an alert or abstention is allowed)."""
        labels, y = np.asarray(labels), np.asarray(y)
        if self.certificate_kind == RECOVERY:
            return labels != y
        return (labels != y) & (labels != ABSTAIN)

    def for_patch_size(self, patch_size: int):
        """A separately configured certifier for ``patch_size``, built from this one's parameters around the same
        network (weights shared, not copied; this one is left as it is)."""
        # Not a deep copy: ART's PyTorchClassifier pickles itself to deep-copy (it saves the model to ~/.art and
        # reloads it), which writes files and can move the copy to another device.
        params = {key: value for key, value in self.get_params().items()
                  if key not in ("use_amp", "opt_level", "loss_scale")}
        return type(self)(params.pop("model"), **{**params, "patch_size": patch_size})  # the model comes first

    def set_params(self, **kwargs: Any) -> None:
        """Set parameters and re-validate the defence; on a ``ValueError`` every parameter keeps its value."""
        previous = {key: getattr(self, key) for key in kwargs if key in self.certifier_params}
        try:
            super().set_params(**kwargs)
            self._check_certifier_params()
        except ValueError:
            for key, value in previous.items():
                setattr(self, key, value)
            raise
