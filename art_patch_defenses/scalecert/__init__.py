"""ScaleCert (Han et al., NeurIPS 2021): certified patch detection with superficial important neurons (SIN).

Certifies detection: for a certified image, a patch of the given size anywhere either leaves the prediction right
or raises an alert. SIN sparsity confines the pixels that can matter to a candidate region R; occluded copies
for the merged windows that meet R decide (Algorithms 1 and 2).
"""

from art_patch_defenses.scalecert import registration  # noqa: F401  (registers the weights tags)
from art_patch_defenses.scalecert.classifier import get_art_model
from art_patch_defenses.scalecert.detection import certify_from_labels, detect_from_labels
from art_patch_defenses.scalecert.estimator import Detection, PyTorchScaleCert, ScaleCertMixin
from art_patch_defenses.scalecert.sin import ScaleCertNet, SuperficialImportantNeurons
from art_patch_defenses.scalecert.training import train_scalecert
from art_patch_defenses.scalecert.windows import OcclusionWindows, merge_group, occlusion_windows

__all__ = [
    "Detection", "OcclusionWindows", "PyTorchScaleCert", "ScaleCertMixin", "ScaleCertNet",
    "SuperficialImportantNeurons", "certify_from_labels", "detect_from_labels", "get_art_model", "merge_group",
    "occlusion_windows", "train_scalecert"]
