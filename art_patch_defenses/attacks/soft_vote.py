"""White-box masked PGD on ART's column de-randomized smoothing (Levine & Feizi, NeurIPS 2020), through the soft
vote of its base classifier: the thresholded vote has no gradient, its softmax mean does (BPDA-style)."""

from __future__ import annotations

from typing import Any

import numpy as np

from art_patch_defenses.attacks.masked import masked_pgd


def masked_pgd_soft_vote(estimator, x: np.ndarray, mask: np.ndarray, y: np.ndarray | None = None,
                         **pgd_kwargs: Any) -> np.ndarray:
    """:func:`masked_pgd` against :func:`~art_patch_defenses.models.art_baselines.soft_vote_classifier` of an
    ART ``PyTorchDeRandomizedSmoothing`` (column ablation); judge the result with the estimator's ``predict``.
    ``pgd_kwargs`` are :func:`masked_pgd`'s (``eps``, ``eps_step``, ``max_iter``, ...)."""
    from art_patch_defenses.models.art_baselines import soft_vote_classifier

    return masked_pgd(soft_vote_classifier(estimator), x, mask, y, **pgd_kwargs)
