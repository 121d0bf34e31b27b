"""PatchZero (Xu et al., WACV 2023): detect adversarial patch pixels with a PSPNet and repaint them.

- :class:`PatchZero`: the ART ``PreprocessorPyTorch`` (hard result in value, BPDA gradient in ``forward``).
- :func:`build_detector` / :func:`load_detector`: the segmentation-models-pytorch PSPNet detector.
- :func:`train_patchzero`: the two-stage (downstream-only, then online BPDA) detector training.
- :func:`imagenet_detector` / :func:`imagenet_patchzero`: the paper's ResNet-50 PSPNet at ImageNet size.
"""

from art_patch_defenses.patchzero.detector import build_detector, detector_logits, detector_loss, load_detector
from art_patch_defenses.patchzero.imagenet import imagenet_detector, imagenet_patchzero
from art_patch_defenses.patchzero.preprocessor import PatchZero, dilate
from art_patch_defenses.patchzero.training import PatchZeroTrainingConfig, train_patchzero

__all__ = [
    "PatchZero",
    "PatchZeroTrainingConfig",
    "build_detector",
    "detector_logits",
    "detector_loss",
    "dilate",
    "imagenet_detector",
    "imagenet_patchzero",
    "load_detector",
    "train_patchzero",
]
