"""The result every certifier's ``certify`` returns: one small dataclass of numpy arrays, never a bare tuple."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CertificationResult:
    """Per-sample outcome of a certifier.

    :param prediction: predicted class, -1 for abstain / alert.
    :param certified: True where the certificate holds (for the prediction, or for ``y`` when given).
    :param radius: certified radius where the method has one (e.g. MRS, L2 in [0, 1] pixel units).
    :param alert: True where a detector raised an alert (certified detection methods).
    :param location: suspected patch location ``(row, col)`` per sample, -1 where none.
    """

    prediction: np.ndarray
    certified: np.ndarray
    radius: np.ndarray | None = None
    alert: np.ndarray | None = None
    location: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prediction)
