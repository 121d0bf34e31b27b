"""Armory-style scenario configs: loading (JSON or YAML), validation and import-by-name.

A config has Armory's top-level blocks: ``model``, ``dataset``, ``attack``, ``defense``, ``metric``,
``scenario``, ``sysconfig`` (and a ``_description``). A *suite* is ``{"_description": ..., "scenarios":
[config, ...]}``: several configs evaluated together (the embedded default is one). Unknown keys are errors
that list the known ones: a typo must not silently change an evaluation.

Extensions to Armory's fields, all in the ``attack`` and ``dataset`` blocks: ``attack.patch_size`` (pixels or
fraction of the image area), ``attack.location`` (``"random"`` or ``[row, col]``), ``attack.seed``,
``attack.type`` ``"patch"`` (universal patch trained on ``dataset.patch_train_n`` training images, then pasted)
or ``"masked"`` (a per-sample attack whose ``generate`` takes ``mask=``), and ``dataset.n`` / ``dataset.seed``
(a class-balanced evaluation subset) / ``dataset.root`` / ``dataset.download``.

Validation happens before any computation and reports every problem of a config (of every scenario of a suite)
together in one :class:`ConfigError`, one line per problem naming ``block.key``, what was expected and what was
given. :func:`validate_config` checks types, ranges and enumerated values without importing anything;
:func:`load_config` also resolves the named modules and attributes and checks, from their signatures, that the
keyword arguments the runner will pass are accepted (nothing is built or loaded).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import numbers
from collections.abc import Iterable, Mapping
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
REQUIRED_KEYS = {"model": {"module", "name"}, "dataset": {"name"}, "attack": {"module", "name"},
                 "defense": {"module", "name", "type"}}
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
#: The only data module the runner loads from (``dataset.module`` may name it, or be left out).
DATA_MODULE = "art_patch_defenses.data"
DEVICE_TYPES = ("cpu", "gpu")
#: Attack keyword arguments the runner or ART reads, with their ranges: integers with a minimum, positive numbers.
ATTACK_INT_KWARGS = {"max_iter": 1, "batch_size": 1, "num_random_init": 0, "nb_random_init": 0, "eot_samples": 1,
                     "restarts": 1, "seed": 0}
ATTACK_POSITIVE_KWARGS = ("eps", "eps_step", "learning_rate", "step_size")
ATTACK_BOOL_KWARGS = ("targeted", "verbose")
ATTACK_NORMS = (1, 2, "inf", math.inf)


class ConfigError(ValueError):
    """Every problem found in a config, one ``block.key: expected ..., got ...`` line each (``problems``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(f"invalid config ({count}):\n" + "\n".join(f"  {p}" for p in self.problems))


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class _Problems(list):
    """Problems as ``path: message`` lines; each check appends and carries on, so all are reported at once."""

    def add(self, path: str, message: str) -> None:
        self.append(f"{path}: {message}")

    def integer(self, path: str, value: Any, minimum: int, *, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not _is_int(value) or value < minimum:
            kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
            self.add(path, f"expected {kind}{' or null' if optional else ''}, {_got(value)}")

    def positive(self, path: str, value: Any) -> None:
        if not _is_number(value) or value <= 0:
            self.add(path, f"expected a positive finite number, {_got(value)}")

    def boolean(self, path: str, value: Any, *, optional: bool = True) -> None:
        if not isinstance(value, bool) and not (value is None and optional):
            self.add(path, f"expected true or false, {_got(value)}")

    def text(self, path: str, value: Any, *, optional: bool = False) -> None:
        if not (isinstance(value, str) and value) and not (value is None and optional):
            self.add(path, f"expected a non-empty string{' or null' if optional else ''}, {_got(value)}")

    def description(self, path: str, value: Any) -> None:
        if not isinstance(value, str):
            self.add(path, f"expected a string, {_got(value)}")

    def mapping(self, path: str, value: Any) -> None:
        if value is not None and not isinstance(value, Mapping):
            self.add(path, f"expected a mapping or null, {_got(value)}")

    def choice(self, path: str, value: Any, choices: Iterable[Any]) -> None:
        choices = tuple(choices)
        if isinstance(value, bool) or value not in choices:
            self.add(path, f"expected one of {', '.join(map(repr, choices))}, {_got(value)}")


def _check_block_keys(block: Any, where: str, problems: _Problems) -> bool:
    """Unknown and missing keys of a block; False if the block is not a mapping (its contents are not checked)."""
    if not isinstance(block, Mapping):
        problems.add(where or "config", f"expected a mapping, {_got(block)}")
        return False
    known = KNOWN_KEYS[where]
    unknown = sorted(set(block) - known, key=str)
    if unknown:
        problems.add(where or "config", f"unknown config key(s) {unknown} in {where or 'the top level'}; "
                     f"known keys: {sorted(known)}")
    for key in sorted(REQUIRED_KEYS.get(where, set()) - set(block)):
        problems.add(f"{where}.{key}", "missing (required)")
    return True


PATCH_SIZE_FORMS = ("a positive int (pixels), a float fraction of the image area in (0, 1] or a [height, width] "
                    "pair of positive ints")


def _patch_size_problem(value: Any) -> str | None:
    if value is None:
        return f"missing (required: {PATCH_SIZE_FORMS})"
    if _is_int(value) and value >= 1:
        return None
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value)):
        return None
    return f"expected {PATCH_SIZE_FORMS}, {_got(value)}"


def attack_patch_shape(size: int | float | list[int], image_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch (height, width) in pixels of a validated ``attack.patch_size`` on images of ``image_hw``: as
    :func:`art_patch_defenses.geometry.patch_shape`, and the fraction 1.0 is the whole image."""
    from art_patch_defenses.geometry import patch_shape

    if isinstance(size, float) and size == 1.0:  # geometry takes fractions below 1 only
        return int(image_hw[0]), int(image_hw[1])
    return patch_shape(size, image_hw)


def _check_names(block: Mapping, where: str, problems: _Problems) -> None:
    for key in ("module", "name"):
        if key in block:  # a missing one is reported as missing
            problems.text(f"{where}.{key}", block[key])


def _check_model(model: Mapping, problems: _Problems) -> None:
    _check_names(model, "model", problems)
    problems.mapping("model.model_kwargs", model.get("model_kwargs"))
    problems.mapping("model.wrapper_kwargs", model.get("wrapper_kwargs"))
    problems.text("model.weights_file", model.get("weights_file"), optional=True)
    problems.mapping("model.fit_kwargs", model.get("fit_kwargs"))
    if model.get("fit") not in (None, False):  # silently evaluating an untrained model would be worse
        problems.add("model.fit", f"expected false or null (this runner evaluates, it does not train), "
                     f"{_got(model.get('fit'))}")


def _check_dataset(dataset: Mapping, problems: _Problems) -> None:
    from art_patch_defenses.data.datasets import DATASETS  # a constant; the module imports only numpy

    if "name" in dataset:
        problems.choice("dataset.name", dataset["name"], DATASETS)
    if dataset.get("module") not in (None, DATA_MODULE):
        problems.add("dataset.module", f"expected {DATA_MODULE!r} or null (the only data module this runner "
                     f"loads from), {_got(dataset.get('module'))}")
    problems.integer("dataset.n", dataset.get("n"), 1, optional=True)  # null: the whole split
    problems.integer("dataset.seed", dataset.get("seed", 0), 0)
    problems.integer("dataset.batch_size", dataset.get("batch_size", 128), 1)
    problems.integer("dataset.patch_train_n", dataset.get("patch_train_n", 500), 1, optional=True)
    problems.text("dataset.eval_split", dataset.get("eval_split", "test"))
    problems.text("dataset.train_split", dataset.get("train_split", "train"))
    problems.text("dataset.root", dataset.get("root"), optional=True)
    problems.boolean("dataset.download", dataset.get("download"))


def _check_attack(attack: Mapping, problems: _Problems) -> None:
    _check_names(attack, "attack", problems)
    problems.choice("attack.type", attack.get("type", "masked"), ATTACK_TYPES)
    problem = _patch_size_problem(attack.get("patch_size"))
    if problem:
        problems.add("attack.patch_size", problem)
    location = attack.get("location", "random")
    if location != "random" and not (isinstance(location, (list, tuple)) and len(location) == 2
                                     and all(_is_int(v) and v >= 0 for v in location)):
        problems.add("attack.location", f"expected 'random' or [row, col] (non-negative ints), {_got(location)}")
    problems.integer("attack.seed", attack.get("seed", 0), 0)
    problems.boolean("attack.targeted", attack.get("targeted"))
    problems.boolean("attack.use_label", attack.get("use_label"))
    if attack.get("targeted") is True:
        scheme = attack.get("targeted_labels")
        if not (isinstance(scheme, Mapping) and scheme.get("scheme") == "fixed" and _is_int(scheme.get("value"))
                and scheme["value"] >= 0):
            problems.add("attack.targeted_labels", "expected {'scheme': 'fixed', 'value': <class index>} for a "
                         f"targeted attack, {_got(scheme)}")
    problems.mapping("attack.generate_kwargs", attack.get("generate_kwargs"))
    kwargs = attack.get("kwargs")
    problems.mapping("attack.kwargs", kwargs)
    if not isinstance(kwargs, Mapping):
        return
    for key, minimum in ATTACK_INT_KWARGS.items():
        if key in kwargs:
            problems.integer(f"attack.kwargs.{key}", kwargs[key], minimum)
    for key in ATTACK_POSITIVE_KWARGS:
        if key in kwargs:
            problems.positive(f"attack.kwargs.{key}", kwargs[key])
    for key in ATTACK_BOOL_KWARGS:
        if key in kwargs:
            problems.boolean(f"attack.kwargs.{key}", kwargs[key], optional=False)
    if "norm" in kwargs and (isinstance(kwargs["norm"], bool) or kwargs["norm"] not in ATTACK_NORMS):
        problems.add("attack.kwargs.norm", f"expected 1, 2 or 'inf', {_got(kwargs['norm'])}")


def _check_defense(defense: Mapping, problems: _Problems) -> None:
    _check_names(defense, "defense", problems)
    problems.mapping("defense.kwargs", defense.get("kwargs"))
    if "type" in defense:
        problems.choice("defense.type", defense.get("type"), DEFENSE_TYPES)
    if defense.get("type") == "Trainer":
        problems.add("defense.type", "'Trainer' needs a training scenario; this runner evaluates "
                     "(use a Preprocessor or Postprocessor, or a model-wrapping defence's factory)")


def config_problems(config: Any) -> list[str]:
    """Every type, range and enumerated-value problem of one scenario config (no import, nothing built)."""
    problems = _Problems()
    if not _check_block_keys(config, "", problems):
        return problems
    for block in ("model", "dataset", "attack"):
        if block not in config:
            problems.add(block, f"config lacks the {block!r} block")
    checks = {"model": _check_model, "dataset": _check_dataset, "attack": _check_attack, "defense": _check_defense}
    for block in sorted(KNOWN_KEYS[""] - {"_description", "adhoc", "user_init"}):
        if config.get(block) is not None and _check_block_keys(config[block], block, problems) and block in checks:
            checks[block](config[block], problems)
    problems.description("_description", config.get("_description", ""))
    if config.get("adhoc") is not None and not isinstance(config["adhoc"], Mapping):
        problems.add("adhoc", f"expected a mapping or null (Armory's scenario settings; this runner ignores it), "
                     f"{_got(config['adhoc'])}")
    scenario = config.get("scenario")
    if isinstance(scenario, Mapping) and (scenario.get("module"), scenario.get("name")) != IMAGE_CLASSIFICATION:
        problems.add("scenario", f"scenario must be Armory's image classification task "
                     f"{'.'.join(IMAGE_CLASSIFICATION)} (the only one this runner evaluates), "
                     f"got {scenario.get('module')}.{scenario.get('name')}")
    if config.get("user_init") is not None:
        problems.add("user_init", "user_init is not supported by this runner: call your setup code before "
                     "evaluating")
    sysconfig = config.get("sysconfig")
    if isinstance(sysconfig, Mapping) and sysconfig.get("device_type") is not None:
        problems.choice("sysconfig.device_type", sysconfig["device_type"], DEVICE_TYPES)
    return problems


def _with_defaults(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["attack"].setdefault("type", "masked")
    config["attack"].setdefault("location", "random")
    return config


def validate_config(config: dict) -> dict:
    """Check one scenario config's keys, types, ranges and enumerated values (:func:`config_problems`); return
    a deep copy with defaults filled.

    :raises ConfigError: listing every problem found.
    """
    problems = config_problems(config)
    if problems:
        raise ConfigError(problems)
    return _with_defaults(config)


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


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:  # not a ValueError: would otherwise escape as a traceback
            raise ConfigError([f"{path}: not valid YAML: {error}"]) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError([f"{path}: not valid JSON: {error}"]) from error


def load_config(source: str | Path | dict, *, check_names: bool = True) -> dict:
    """Load a config or suite from a JSON/YAML file, or take a dict; validate every scenario in it.

    :param check_names: also import the named modules and check, from signatures, the keyword arguments the
        runner will pass (:func:`name_problems`); nothing is built or loaded.
    :return: a suite ``{"_description": str, "scenarios": [config, ...]}``.
    :raises ConfigError: listing every problem of every scenario (``scenarios[i].block.key: ...`` in a suite).
    :raises FileNotFoundError: if ``source`` names no file.
    """
    raw = source if isinstance(source, dict) else _read(Path(source))
    if not isinstance(raw, Mapping):
        raise ConfigError([f"config: expected a mapping (a scenario config or a suite), {_got(raw)}"])
    problems = _Problems()
    if "scenarios" in raw:
        unknown = sorted(set(raw) - {"_description", "scenarios"}, key=str)
        if unknown:
            problems.add("suite", f"unknown suite key(s) {unknown}; known keys: ['_description', 'scenarios']")
        problems.description("_description", raw.get("_description", ""))
        configs = raw["scenarios"]
        if not isinstance(configs, list) or not configs:
            problems.add("scenarios", f"a suite needs a non-empty list of scenario configs, {_got(configs)}")
            raise ConfigError(problems)
        prefixes = [f"scenarios[{i}]." for i in range(len(configs))]
    else:
        configs, prefixes = [raw], [""]
    found = name_problems(configs) if check_names else [[] for _ in configs]
    for config, prefix, named in zip(configs, prefixes, found, strict=True):
        for problem in [*config_problems(config), *named]:  # "config: ..." is the scenario's top level
            problems.append(prefix[:-1] + problem[6:] if prefix and problem.startswith("config:") else prefix + problem)
    if problems:
        raise ConfigError(problems)
    scenarios = [_with_defaults(config) for config in configs]
    description = raw.get("_description", "")
    return {"_description": description, "scenarios": scenarios}


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


def _resolve_block(block: Any, path: str, problems: _Problems) -> Any:
    """The block's ``module.name``, or None (a problem recorded) if it does not resolve or is not given right."""
    if not (isinstance(block, Mapping) and isinstance(block.get("module"), str) and block["module"]
            and isinstance(block.get("name"), str) and block["name"]):
        return None  # reported by config_problems
    try:
        return resolve(block["module"], block["name"])
    except ValueError as error:
        problems.add(f"{path}.module", str(error))
    except Exception as error:  # a module that fails while importing: report it with the rest
        problems.add(f"{path}.module", f"importing {block['module']!r} failed: {type(error).__name__}: {error}")
    return None


def _keywords(target: Any) -> tuple[inspect.Signature | None, list[str], bool]:
    """``target``'s signature, the names it takes by keyword, and whether it takes ``**kwargs``."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins and some extension types have none: nothing to check
        return None, [], True
    params = signature.parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return signature, names, any(p.kind is p.VAR_KEYWORD for p in params)


def _call_problems(target: Any, path: str, call: str, positional: int, supplied: Iterable[str],
                   given: Mapping, given_path: str, problems: _Problems, defaulted: Iterable[str] = ()) -> None:
    """Whether ``target(<positional> args, **supplied, **given)`` binds: the runner's call, checked on the
    signature without calling. ``supplied`` are the keywords the runner passes itself (the config may not repeat
    them), ``defaulted`` those it passes unless the config gives them, ``given`` the config's."""
    signature, names, var_keyword = _keywords(target)
    if signature is None:
        return
    # The first `positional` parameters get the runner's positional arguments: they are not keyword options.
    positional_names = [p.name for p in signature.parameters.values()
                        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:positional]
    known = [name for name in names if name not in positional_names]
    supplied = list(supplied)
    clash = sorted(set(given) & set(supplied))
    if clash:
        problems.add(given_path, f"{clash} are set by the runner for {call}; remove them")
    if var_keyword and inspect.ismethod(target) and inspect.isclass(target.__self__):
        # An alternative constructor (a classmethod such as PatchZero.from_checkpoint) hands its **kwargs to the
        # class: check them against the class's own signature, so that a misspelled option is caught now.
        _, class_names, class_var_keyword = _keywords(target.__self__)
        if not class_var_keyword:
            known, var_keyword = sorted(set(known) | set(class_names)), False
    unknown = [] if var_keyword else sorted(set(given) - set(known) - set(supplied), key=str)
    if unknown:
        options = sorted(set(known) - set(supplied))
        problems.add(given_path, f"unknown keyword(s) {unknown} for {call}; known: {', '.join(options)}")
    missing = [] if var_keyword else [name for name in [*supplied, *defaulted] if name not in known + list(given)]
    if missing:
        problems.add(path, f"{call} does not take {', '.join(f'{m}=' for m in missing)}, which the runner passes")
    if unknown or missing or clash:
        return
    arguments = {name: None for name in [*supplied, *defaulted, *given]}
    try:
        signature.bind(*[None] * positional, **arguments)
    except TypeError as error:
        problems.add(path, f"{call} cannot be called as the runner calls it: {error}")


def _model_name_problems(config: Mapping, problems: _Problems) -> None:
    """For the package's own factories: the model name, the weights tag, and the patch geometry against the
    model's image size (registry look-ups and arithmetic: nothing is built or loaded)."""
    from art_patch_defenses.models.registry import NO_WEIGHTS, get_spec, weights_path

    model, attack = config["model"], config.get("attack")
    model_kwargs = model.get("model_kwargs") or {}
    name = model_kwargs.get("name") if isinstance(model_kwargs, Mapping) else None
    if not isinstance(name, str):
        return  # the factory names what it needs
    try:
        spec = get_spec(name)
    except ValueError as error:
        problems.add("model.model_kwargs.name", str(error))
        return
    weights = model.get("weights_file") or model_kwargs.get("weights")
    if isinstance(weights, str) and weights != NO_WEIGHTS:
        try:
            weights_path(name, weights)
        except ValueError as error:
            problems.add("model.weights_file" if model.get("weights_file") else "model.model_kwargs.weights",
                         str(error))
    if not isinstance(attack, Mapping) or _patch_size_problem(attack.get("patch_size")):
        return
    image_hw = tuple(spec.input_shape[1:])
    try:
        shape = attack_patch_shape(attack["patch_size"], image_hw)
    except ValueError as error:
        problems.add("attack.patch_size", f"{error} (the {name} model takes {image_hw[0]}x{image_hw[1]} images)")
        return
    location = attack.get("location", "random")
    if (isinstance(location, (list, tuple)) and len(location) == 2 and all(_is_int(v) for v in location)
            and any(v + s > side for v, s, side in zip(location, shape, image_hw, strict=True))):
        problems.add("attack.location", f"a {shape[0]}x{shape[1]} patch at {list(location)} leaves the "
                     f"{image_hw[0]}x{image_hw[1]} image of the {name} model")
    target = (attack.get("targeted_labels") or {}).get("value") if attack.get("targeted") is True else None
    if _is_int(target) and target >= spec.nb_classes:
        problems.add("attack.targeted_labels", f"value {target} is not a class of the {name} model "
                     f"(0 to {spec.nb_classes - 1})")


def _mapping(value: Any) -> dict:
    return dict(value) if isinstance(value, Mapping) else {}


def _attack_call_problems(attack: Any, problems: _Problems) -> None:
    component = _resolve_block(attack, "attack", problems)
    kind = attack.get("type", "masked") if component is not None else None
    if kind not in ATTACK_TYPES:
        return
    kwargs = _mapping(attack.get("kwargs"))
    attack_name = f"{attack['module']}.{attack['name']}"
    if kind == "patch":
        _call_problems(component, "attack.name", f"the patch attack {attack_name}(estimator, x, y, ...)", 3,
                       ("patch_size", "target"), kwargs, "attack.kwargs", problems)
    elif inspect.isclass(component):
        defaulted = ("targeted",) if attack.get("targeted") is True else ()
        _call_problems(component, "attack.name", f"the attack class {attack_name}(estimator, ...)", 1, (), kwargs,
                       "attack.kwargs", problems, defaulted)
    else:
        generate_kwargs = _mapping(attack.get("generate_kwargs"))
        clash = sorted(set(kwargs) & set(generate_kwargs))
        if clash:
            problems.add("attack.generate_kwargs", f"{clash} are also in attack.kwargs (a function attack gets both "
                         "as keyword arguments)")
        _call_problems(component, "attack.name", f"the attack function {attack_name}(estimator, x, mask, ...)", 3,
                       ("y",), {**kwargs, **generate_kwargs}, "attack.kwargs", problems)


def name_problems(scenarios: list[Any]) -> list[list[str]]:
    """Per scenario config: the modules and attributes that do not resolve, and the keyword arguments the
    resolved callables would refuse when the runner calls them (read from their signatures; a callable that takes
    ``**kwargs`` is not second-guessed, except an alternative constructor, checked against its class). Values that
    :func:`config_problems` refuses are skipped here, so both can be reported together.

    The model factory is called as ``factory(model_kwargs, wrapper_kwargs, weights_file)``; the package's own
    factories check their ``model_kwargs`` keys themselves when called, so here only their model name, weights tag
    and the patch geometry are checked against the model registry.
    """
    found = []
    for config in scenarios:
        problems = _Problems()
        found.append(problems)
        if not isinstance(config, Mapping):
            continue
        model = config.get("model")
        factory = _resolve_block(model, "model", problems)
        if factory is not None:
            call = f"the model factory {model['module']}.{model['name']}(model_kwargs, wrapper_kwargs, weights_file)"
            _call_problems(factory, "model.name", call, 3, (), {}, "model", problems)
        if isinstance(config.get("attack"), Mapping):
            _attack_call_problems(config["attack"], problems)
        defense = config.get("defense")
        component = _resolve_block(defense, "defense", problems)
        if component is not None:
            _call_problems(component, "defense.name", f"the defence {defense['module']}.{defense['name']}", 0, (),
                           _mapping(defense.get("kwargs")), "defense.kwargs", problems)
    # After every scenario's modules are imported: a defence package registers its models on import, and the run
    # will have imported them all too.
    for config, problems in zip(scenarios, found, strict=True):
        model = config.get("model") if isinstance(config, Mapping) else None
        if (isinstance(model, Mapping) and isinstance(model.get("module"), str)
                and model["module"].split(".")[0] == "art_patch_defenses"
                and not any(p.startswith(("model.module", "model.name")) for p in problems)):
            _model_name_problems(config, problems)
    return [list(problems) for problems in found]
