"""Armory-style scenario configs: loading (JSON or YAML), key validation and import-by-name.

A config has Armory's top-level blocks: ``model``, ``dataset``, ``attack``, ``defense``, ``metric``,
``scenario``, ``sysconfig`` (and a ``_description``). A *suite* is ``{"_description": ..., "scenarios":
[config, ...]}``: several configs evaluated together (the embedded default is one). Unknown keys are errors
that list the known ones: a typo must not silently change an evaluation.

Extensions to Armory's fields, all in the ``attack`` and ``dataset`` blocks: ``attack.patch_size`` (pixels or
fraction of the image area), ``attack.location`` (``"random"`` or ``[row, col]``), ``attack.seed``,
``attack.type`` ``"patch"`` (universal patch trained on ``dataset.patch_train_n`` training images, then pasted)
or ``"masked"`` (a per-sample attack whose ``generate`` takes ``mask=``), and ``dataset.n`` / ``dataset.seed``
(a class-balanced evaluation subset) / ``dataset.root`` / ``dataset.download``.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

KNOWN_KEYS: dict[str, set[str]] = {
    "": {"_description", "adhoc", "model", "dataset", "attack", "defense", "metric", "scenario", "sysconfig",
         "user_init"},
    "model": {"module", "name", "model_kwargs", "wrapper_kwargs", "weights_file", "fit", "fit_kwargs"},
    "dataset": {
        "module", "name", "framework", "batch_size", "eval_split", "train_split", "n", "seed", "root",
        "download", "patch_train_n",
    },
    "attack": {
        "module", "name", "kwargs", "generate_kwargs", "type", "targeted", "targeted_labels", "use_label",
        "knowledge", "patch_size", "location", "seed",
    },
    "defense": {"module", "name", "kwargs", "type"},
    "metric": {"means", "perturbation", "record_metric_per_sample", "task", "profiler_type"},
    "scenario": {"module", "name", "kwargs"},
    "sysconfig": {"device_type", "output_dir", "verbose", "use_gpu", "gpus", "docker_image", "external_github_repo"},
}
REQUIRED_KEYS = {"model": {"module", "name"}, "dataset": {"name"}, "attack": {"module", "name"}}
#: The keys Armory's own config schema (armory-testbed 0.19, ``armory/utils/config_schema.json``) requires, per
#: block ("" = top level); blocks that may be null there are checked only when present. Our example configs carry
#: them all, so that Armory's validator accepts them (see docs/armory.md for what else Armory would need).
ARMORY_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "": ("_description", "adhoc", "attack", "dataset", "defense", "metric", "model", "scenario", "sysconfig"),
    "model": ("fit", "fit_kwargs", "model_kwargs", "module", "name", "weights_file", "wrapper_kwargs"),
    "dataset": ("batch_size", "module", "name"),
    "attack": ("knowledge", "kwargs", "module", "name"),
    "defense": ("kwargs", "module", "name", "type"),
    "metric": ("means", "perturbation", "record_metric_per_sample", "task"),
    "scenario": ("kwargs", "module", "name"),
    "sysconfig": ("docker_image", "external_github_repo", "gpus", "use_gpu"),
}
ATTACK_TYPES = ("patch", "masked")
DEFENSE_TYPES = ("Preprocessor", "Postprocessor", "Trainer")
#: The only Armory scenario this runner evaluates (a ``scenario`` block may name it, or be left out).
IMAGE_CLASSIFICATION = ("armory.scenarios.image_classification", "ImageClassificationTask")


def _check_keys(block: dict, where: str) -> None:
    if not isinstance(block, dict):
        raise ValueError(f"config block {where or 'top level'} must be a mapping, got {type(block).__name__}")
    known = KNOWN_KEYS[where]
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown} in {where or 'the top level'}; known keys: {sorted(known)}"
        )
    missing = sorted(REQUIRED_KEYS.get(where, set()) - set(block))
    if missing:
        raise ValueError(f"config block {where} lacks required key(s) {missing}")


def validate_config(config: dict) -> dict:
    """Check one scenario config's keys and enumerated values; return a deep copy with defaults filled."""
    _check_keys(config, "")
    for block in ("model", "dataset", "attack"):
        if block not in config:
            raise ValueError(f"config lacks the {block!r} block")
    for block in KNOWN_KEYS[""] - {"_description", "adhoc", "user_init"}:
        if config.get(block) is not None:
            _check_keys(config[block], block)
    if config.get("adhoc") is not None and not isinstance(config["adhoc"], dict):
        raise ValueError("adhoc must be a mapping or null (Armory's scenario settings; this runner ignores it)")
    scenario = config.get("scenario")
    if scenario is not None and (scenario.get("module"), scenario.get("name")) != IMAGE_CLASSIFICATION:
        raise ValueError(f"scenario must be Armory's image classification task {'.'.join(IMAGE_CLASSIFICATION)} "
                         f"(the only one this runner evaluates), got {scenario.get('module')}.{scenario.get('name')}")
    if config.get("user_init") is not None:
        raise ValueError("user_init is not supported by this runner: call your setup code before evaluating")
    config = copy.deepcopy(config)
    attack = config["attack"]
    attack.setdefault("type", "masked")
    if attack["type"] not in ATTACK_TYPES:
        raise ValueError(f"attack.type must be one of {ATTACK_TYPES}, got {attack['type']!r}")
    location = attack.setdefault("location", "random")
    if location != "random" and not (isinstance(location, (list, tuple)) and len(location) == 2):
        raise ValueError(f"attack.location must be 'random' or [row, col], got {location!r}")
    if attack.get("patch_size") is None:
        raise ValueError("attack.patch_size is required (pixels, or a fraction of the image area)")
    if config.get("defense") is not None:
        defense = config["defense"]
        if defense.get("type") not in DEFENSE_TYPES:
            raise ValueError(f"defense.type must be one of {DEFENSE_TYPES}, got {defense.get('type')!r}")
    return config


def armory_schema_gaps(config: dict) -> list[str]:
    """The keys of one scenario config that Armory's schema requires and the config lacks (``block.key``).

    Armory accepts extra keys (its schema has no ``additionalProperties``), so a config with no gaps passes its
    validator; whether Armory can then *run* it is another matter (docs/armory.md).
    """
    gaps = [key for key in ARMORY_REQUIRED_KEYS[""] if key not in config]
    for block, keys in ARMORY_REQUIRED_KEYS.items():
        if block and isinstance(config.get(block), dict):
            gaps += [f"{block}.{key}" for key in keys if key not in config[block]]
    attack = config.get("attack") or {}
    if "knowledge" in attack and attack["knowledge"] not in ("white", "black"):
        gaps.append("attack.knowledge (white or black)")
    return gaps


def load_config(source: str | Path | dict) -> dict:
    """Load a config or suite from a JSON/YAML file, or take a dict; validate every scenario in it.

    :return: a suite ``{"_description": str, "scenarios": [config, ...]}``.
    """
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("a config must be a mapping")
    if "scenarios" in raw:
        unknown = sorted(set(raw) - {"_description", "scenarios"})
        if unknown:
            raise ValueError(f"unknown suite key(s) {unknown}; known keys: ['_description', 'scenarios']")
        if not raw["scenarios"]:
            raise ValueError("a suite needs at least one scenario")
        scenarios = [validate_config(c) for c in raw["scenarios"]]
        return {"_description": raw.get("_description", ""), "scenarios": scenarios}
    return {"_description": raw.get("_description", ""), "scenarios": [validate_config(raw)]}


def resolve(module: str, name: str) -> Any:
    """Import ``module`` and return its attribute ``name`` (dotted names such as ``Class.method`` work), with
    an error that says which part failed."""
    try:
        found: Any = importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"cannot import module {module!r}: {error}") from error
    for part in name.split("."):
        if not hasattr(found, part):
            raise ValueError(f"module {module!r} has no attribute {name!r}")
        found = getattr(found, part)
    return found
