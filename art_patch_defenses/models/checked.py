"""An ART ``PyTorchClassifier`` that checks its inputs: the classifier
:func:`~art_patch_defenses.models.make_classifier` builds, so that every pipeline of the package (a
PatchZero-defended classifier included) refuses a wrong layout, size, value range, NaN or an empty batch with a
clear error."""

from __future__ import annotations

from art.estimators.classification import PyTorchClassifier

from art_patch_defenses.validation import CheckedInputsMixin


class CheckedPyTorchClassifier(CheckedInputsMixin, PyTorchClassifier):
    """ART's ``PyTorchClassifier`` with the package's input contract at ``predict``, ``loss_gradient``,
    ``class_gradient`` and ``fit`` (:class:`~art_patch_defenses.validation.CheckedInputsMixin`); otherwise the same."""
