"""Test setup: every cache (ART's ~/.art, matplotlib, torch, hf, the project's own) goes into a temp dir."""

import os
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="apd-tests-")
os.environ["HOME"] = _HOME  # ART writes ~/.art on import
os.environ["MPLCONFIGDIR"] = os.path.join(_HOME, "mpl")
os.environ["TORCH_HOME"] = os.path.join(_HOME, "torch")
os.environ["HF_HOME"] = os.path.join(_HOME, "hf")
os.environ["XDG_CACHE_HOME"] = os.path.join(_HOME, "cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ART_PATCH_DEFENSES_CACHE"] = os.path.join(_HOME, "apd")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
needs_shared = pytest.mark.skipif(
    not (SHARED / "data" / "cifar10").is_dir() or not (SHARED / "models" / "cifar10").is_dir(),
    reason=f"needs the shared data and weights at {SHARED} (absent here)",
)


@pytest.fixture(scope="session")
def mnist_classifier():
    """The embedded MNIST CNN (the committed ``checkpoints/mnist_embedded_mnist_cnn.pt``) as an ART classifier."""
    from art_patch_defenses.models import build_model, make_classifier

    return make_classifier(build_model("mnist_cnn", "embedded"), "mnist_cnn")


@pytest.fixture(scope="session")
def mnist_test():
    from art_patch_defenses.data import load_dataset

    return load_dataset("mnist_embedded", "test")


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
