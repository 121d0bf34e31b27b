"""Where the project finds shared data, pretrained weights, its own checkpoints and its cache.

Every location can be overridden by an environment variable, so the package runs on a user's machine where
the repository's ``../shared`` folder does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def shared_dir() -> Path:
    """The shared folder (data, papers, pretrained weights): ``$ART_PATCH_DEFENSES_SHARED`` or ``../shared``."""
    env = os.environ.get("ART_PATCH_DEFENSES_SHARED")
    return Path(env) if env else (REPO_ROOT.parent / "shared").resolve()


def checkpoints_dir() -> Path:
    """The committed checkpoints: ``$ART_PATCH_DEFENSES_CHECKPOINTS`` or the repository's ``checkpoints/``."""
    env = os.environ.get("ART_PATCH_DEFENSES_CHECKPOINTS")
    return Path(env) if env else REPO_ROOT / "checkpoints"


def cache_dir() -> Path:
    """Decoded data sets and models trained on first use: ``$ART_PATCH_DEFENSES_CACHE`` or ``~/.cache``."""
    env = os.environ.get("ART_PATCH_DEFENSES_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "art_patch_defenses"
    path.mkdir(parents=True, exist_ok=True)
    return path
