"""ScaleCert's decisions from the labels of the occluded copies (Algorithms 1 and 2), framework-free.

``window_labels[n, w]`` is the label of image ``n`` with merged window ``w`` occluded. Windows outside the
candidate region are not run: their label is the image's own prediction, exactly (the SIN invariance, see
:mod:`.sin`), so callers fill them in with it and mark the run ones in ``evaluated``.
"""

from __future__ import annotations

import numpy as np


def certify_from_labels(prediction: np.ndarray, window_labels: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Algorithm 2 (plus the clean prediction): certified iff the prediction and every occluded copy are ``y``."""
    return (prediction == y) & np.all(window_labels == y[:, None], axis=1)


def detect_from_labels(prediction: np.ndarray, window_labels: np.ndarray, evaluated: np.ndarray,
                       contains: np.ndarray, nb_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Algorithm 1 on the labels of the occluded copies.

    - No occluded copy disagrees with the prediction ``y*``: return ``y*`` (line 18).
    - Some patch placement ``l`` has every window that contains it agree on one label ``y' != y*``: alert, the
      patch is at ``l`` (line 11; the paper's ``r x r`` windows that cover the patch, generalised to merged
      windows). Of such placements the one inside the most windows is reported.
    - Otherwise alert if a label other than ``y*`` has more votes than ``y*`` among the occluded copies that were
      run (line 13), else return ``y*`` (line 16).

    :param prediction: ``(N,)`` labels ``y*`` of the unoccluded images.
    :param window_labels: ``(N, W)`` labels with each window occluded.
    :param evaluated: ``(N, W)`` which copies were run (the windows meeting the candidate region).
    :param contains: ``(L, W)`` window ``w`` contains the whole patch at placement ``l``.
    :return: labels (-1 for alert), alert flags and the alert's placement index (-1 where none).
    """
    n = len(prediction)
    disagree = window_labels != prediction[:, None]
    alert = np.zeros(n, dtype=bool)
    placement = np.full(n, -1)
    windows_per_placement = contains.sum(1)
    reach = contains.astype(np.float32)  # (L, W); window counts are exact in float32
    # A placement inside no window would be unanimous for every label (never the case for ScaleCert's windows).
    uncovered = (windows_per_placement == 0) if nb_classes > 1 else np.zeros(len(contains), dtype=bool)
    for i in np.flatnonzero(disagree.any(axis=1)):
        # Only labels some window gave can be unanimous over a placement's windows: count those, not all classes.
        caught = uncovered.copy()
        for label in np.unique(window_labels[i]):
            if label != prediction[i]:
                caught |= reach @ (window_labels[i] == label).astype(np.float32) == windows_per_placement
        if caught.any():
            alert[i] = True
            placement[i] = int(np.argmax(np.where(caught, windows_per_placement, -1)))
            continue
        counts = np.bincount(window_labels[i][evaluated[i]], minlength=nb_classes)
        alert[i] = counts.max() > counts[prediction[i]]
    return np.where(alert, -1, prediction), alert, placement
