"""ART's own certifiers as baselines, behind this package's certifier protocol.

- :class:`PyTorchDeRandomizedSmoothingCertifier`: ART's ``PyTorchDeRandomizedSmoothing`` (column ablation, Levine &
  Feizi, NeurIPS 2020) with the protocol of :mod:`art_patch_defenses.certification`;
  :func:`get_art_derandomized_smoothing` builds it on a registered column-band model.
"""

from art_patch_defenses.baselines.derandomized_smoothing import (
    PyTorchDeRandomizedSmoothingCertifier,
    SoftColumnVote,
    get_art_derandomized_smoothing,
    soft_vote_classifier,
)

__all__ = ["PyTorchDeRandomizedSmoothingCertifier", "SoftColumnVote", "get_art_derandomized_smoothing",
           "soft_vote_classifier"]
