"""What a scenario run produces, shared by the runner and the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ScenarioResult:
    """One scenario's Armory-shaped record and the example images kept for the report."""

    record: dict[str, Any]
    examples: dict[str, np.ndarray] = field(default_factory=dict)


def scenario_label(config: dict) -> tuple[str, str, str]:
    """Short (model, defence, attack) labels of a scenario for tables and plots."""
    model = config["model"].get("model_kwargs", {}).get("name", config["model"]["name"])
    if config.get("defense"):
        defense = config["defense"]["name"]
    elif config["model"]["module"] != "art_patch_defenses.models":  # a model-wrapping defence's factory
        defense = config["model"]["module"].rsplit(".", 1)[-1]
    else:
        defense = "none"
    return model, defense, config["attack"]["name"]
