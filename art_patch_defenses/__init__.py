"""art-patch-defenses: adversarial patch defences as components of IBM's Adversarial Robustness Toolbox.

The public components are imported lazily (``from art_patch_defenses import PatchZero``), so importing the
package itself does not import torch or ART.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_COMPONENTS = {
    "FeatureNormClipping": "art_patch_defenses.fnc",
    "PyTorchFNCClassifier": "art_patch_defenses.fnc",
    "fnc_classifier": "art_patch_defenses.fnc",
    "insert_fnc": "art_patch_defenses.fnc",
    "PatchZero": "art_patch_defenses.patchzero",
    "PyTorchRobustMasking": "art_patch_defenses.robust_masking",
    "PyTorchMRS": "art_patch_defenses.mrs",
    "PyTorchScaleCert": "art_patch_defenses.scalecert",
    "PyTorchPatchCleanser": "art_patch_defenses.patchcleanser",
    "CertificationResult": "art_patch_defenses.certification",
    "CertifierMixin": "art_patch_defenses.certification",
    "predict_labels": "art_patch_defenses.certification",
    "ABSTAIN": "art_patch_defenses.certification",
    "PyTorchDeRandomizedSmoothingCertifier": "art_patch_defenses.baselines",
    "MaskedAutoPGD": "art_patch_defenses.attacks",
    "masked_pgd": "art_patch_defenses.attacks",
    "masked_pgd_surrogate": "art_patch_defenses.attacks",
    "adversarial_patch": "art_patch_defenses.attacks",
    "lavan_patch": "art_patch_defenses.attacks",
    "run_suite": "art_patch_defenses.evaluation",
    "verify_certificates": "art_patch_defenses.evaluation.verify",
}

__all__ = ["__version__", *_COMPONENTS]


def __getattr__(name: str) -> Any:
    if name in _COMPONENTS:
        return getattr(importlib.import_module(_COMPONENTS[name]), name)
    raise AttributeError(f"module 'art_patch_defenses' has no attribute {name!r}")
