"""The Armory-style scenario runner: config in, results JSON (Armory's top level and metric names) out.

Every attack is white-box against the estimator the scenario builds, defences included. The attacker's patch
size, location rule and budget are copied into each result, beside the numbers they produced.

Nothing finished is lost: the config is validated and the output directory checked before any computation, each
scenario's record is written (atomically) as soon as it finishes, ``manifest.json`` says how the run stands, and
a run stopped by Ctrl-C or an error still writes ``results.json`` with the scenarios that finished.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from art_patch_defenses import __version__
from art_patch_defenses.attacks.masked import seed_art_random_start
from art_patch_defenses.certification import ABSTAIN, DETECTION, CertifierMixin, predict_labels
from art_patch_defenses.data import load_dataset
from art_patch_defenses.evaluation.config import attack_patch_shape, load_config, resolve
from art_patch_defenses.evaluation.metrics import accuracy_interval, mask_precision_recall_f1
from art_patch_defenses.evaluation.report import write_reports
from art_patch_defenses.evaluation.results import RunManifest, ScenarioResult, prepare_output_dir, scenario_label
from art_patch_defenses.geometry import (
    expand_masks,
    paste_patch,
    patch_area_fraction,
    patch_masks,
    random_locations,
)

DEFAULT_SCENARIO = Path(__file__).with_name("default_scenario.json")
N_EXAMPLES = 6
logger = logging.getLogger(__name__)


def labels_in_batches(estimator, x: np.ndarray, batch_size: int, desc: str, verbose: bool = True) -> np.ndarray:
    """The estimator's labels in batches with a progress bar; -1 where a certifier abstains or alerts (its abstain
    column, or an all-zero row from an ART estimator)."""
    labels = []
    for start in tqdm(range(0, len(x), batch_size), desc=desc, disable=not verbose, leave=False):
        scores = estimator.predict(x[start : start + batch_size], batch_size=batch_size)
        labels.append(predict_labels(scores, estimator.nb_classes))
    return np.concatenate(labels)


def build_estimator(config: dict, cache: dict | None = None):
    """Build the scenario's ART estimator through the model block's factory, then attach its defence."""
    model = config["model"]
    key = repr((model, config.get("defense"), config.get("sysconfig")))
    if cache is not None and key in cache:
        return cache[key]
    factory = resolve(model["module"], model["name"])
    wrapper_kwargs = dict(model.get("wrapper_kwargs") or {})
    device_type = (config.get("sysconfig") or {}).get("device_type")
    if device_type:
        wrapper_kwargs.setdefault("device_type", device_type)
    estimator = factory(model.get("model_kwargs") or {}, wrapper_kwargs, model.get("weights_file"))
    defense = config.get("defense")
    if defense is not None:
        component = resolve(defense["module"], defense["name"])
        if defense["type"] == "Trainer":
            raise ValueError("defense.type 'Trainer' needs a training scenario; this runner evaluates")
        instance = component(**(defense.get("kwargs") or {}))
        if defense["type"] == "Preprocessor":
            estimator.set_params(preprocessing_defences=[*(estimator.preprocessing_defences or []), instance])
        else:
            estimator.set_params(postprocessing_defences=[*(estimator.postprocessing_defences or []), instance])
    if cache is not None:
        cache[key] = estimator
    return estimator


def _targets(attack: dict, y: np.ndarray) -> np.ndarray | None:
    if not attack.get("targeted"):
        return None
    scheme = attack.get("targeted_labels") or {}
    if scheme.get("scheme") != "fixed" or "value" not in scheme:
        raise ValueError("a targeted attack needs targeted_labels {'scheme': 'fixed', 'value': <class>}")
    return np.full_like(y, int(scheme["value"]))


def run_attack(estimator, config: dict, x: np.ndarray, y: np.ndarray, verbose: bool = True):
    """Run the scenario's attack; return adversarial images, the patch masks ``(n, H, W)`` and attack facts."""
    attack, dataset = config["attack"], config["dataset"]
    image_hw = x.shape[2:4]
    shape = attack_patch_shape(attack["patch_size"], image_hw)
    seed = int(attack.get("seed", 0))
    targets = _targets(attack, y)
    if attack["location"] == "random":
        locations = random_locations(len(x), image_hw, shape, seed)
    else:
        locations = np.tile(np.asarray(attack["location"], dtype=int), (len(x), 1))
    component = resolve(attack["module"], attack["name"])
    kwargs = dict(attack.get("kwargs") or {})
    if _takes_keyword(component, "verbose"):  # not every attack has a progress bar to switch
        kwargs.setdefault("verbose", verbose)
    seed_art_random_start(seed)  # ART's random starts draw from the global generators: one seed fixes them too
    if attack["type"] == "patch":
        train = load_dataset(
            dataset["name"], dataset.get("train_split", "train"), n=dataset.get("patch_train_n", 500),
            seed=seed, root=dataset.get("root"), download=dataset.get("download", False),
        )
        target = None if targets is None else int(targets[0])
        patch = component(estimator, train.x, train.y, patch_size=shape, target=target, **kwargs)
        x_adv, masks = paste_patch(x, patch, locations)
        facts = {"patch_trained_on": f"{len(train)} {dataset['name']} {dataset.get('train_split', 'train')} images"}
    else:
        masks = patch_masks(image_hw, shape, locations)
        labels = targets if targets is not None else (y if attack.get("use_label", True) else None)
        generate_kwargs = dict(attack.get("generate_kwargs") or {})
        if targets is not None:
            kwargs.setdefault("targeted", True)
        facts = {}
        if isinstance(component, type):
            instance = component(estimator, **kwargs)
            x_adv = instance.generate(x, y=labels, mask=expand_masks(masks, x), **generate_kwargs)
            if getattr(instance, "last_masks", None) is not None:  # an attack that chose its own placements
                masks = np.asarray(instance.last_masks, dtype=bool)
            if getattr(instance, "report", None) is not None:  # what an ensemble ran, attack by attack
                facts["attack_report"] = dataclasses.asdict(instance.report)
        else:
            x_adv = component(estimator, x, expand_masks(masks, x), y=labels, **kwargs, **generate_kwargs)
    facts.update(
        patch_pixels=list(shape), patch_area_fraction=round(patch_area_fraction(shape, image_hw), 4),
        location=attack["location"], location_seed=seed,
    )
    return x_adv.astype(np.float32), masks, facts


def _takes_keyword(target, name: str) -> bool:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True  # no signature to read: pass it, as before
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def run_scenario(config: dict, cache: dict | None = None, verbose: bool = True) -> ScenarioResult:
    """Evaluate one validated scenario config; return its Armory-shaped record and example images."""
    start = time.time()
    dataset = config["dataset"]
    data = load_dataset(
        dataset["name"], dataset.get("eval_split", "test"), n=dataset.get("n"), seed=dataset.get("seed", 0),
        root=dataset.get("root"), download=dataset.get("download", False),
    )
    estimator = build_estimator(config, cache)
    batch_size = int(dataset.get("batch_size", 128))
    benign = labels_in_batches(estimator, data.x, batch_size, "predict clean images", verbose)
    x_adv, masks, facts = run_attack(estimator, config, data.x, data.y, verbose)
    adversarial = labels_in_batches(estimator, x_adv, batch_size, "predict attacked images", verbose)
    outside = ~expand_masks(masks, data.x).astype(bool)
    n = len(data)
    results = {
        "benign_mean_categorical_accuracy": float(np.mean(benign == data.y)),
        "benign_accuracy_interval_95": accuracy_interval(int(np.sum(benign == data.y)), n),
        "adversarial_mean_categorical_accuracy": float(np.mean(adversarial == data.y)),
        "adversarial_accuracy_interval_95": accuracy_interval(int(np.sum(adversarial == data.y)), n),
        "perturbation_mean_linf": float(np.abs(x_adv - data.x).reshape(len(x_adv), -1).max(1).mean()),
        "max_change_outside_patch": float(np.abs(x_adv - data.x)[outside].max(initial=0.0)),
        "abstain_rate_benign": float(np.mean(benign == -1)),
        "abstain_rate_adversarial": float(np.mean(adversarial == -1)),
        "num_samples": int(len(data)),
        "seconds": round(time.time() - start, 2),
        **facts,
    }
    if isinstance(estimator, CertifierMixin):  # its own certificate (for its configured patch), clean images
        certified = estimator.certify(data.x, data.y, batch_size=batch_size, verbose=verbose)
        results["certified_accuracy"] = float(np.mean(certified.certified))
        results["certified_accuracy_interval_95"] = accuracy_interval(int(np.sum(certified.certified)), n)
        results["certified_patch_pixels"] = int(estimator.patch_size)
        results["certificate_kind"] = estimator.certificate_kind
        if estimator.certificate_kind == DETECTION:  # the detection guarantee: right, or an alert
            results["adversarial_right_or_alert"] = float(np.mean((adversarial == data.y) | (adversarial == ABSTAIN)))
    for defence in estimator.preprocessing_defences or []:
        if hasattr(defence, "masks"):  # a patch detector: how well its segmentation found the attacker's patch
            quality = mask_precision_recall_f1(defence.masks(x_adv, dilated=False), masks)
            results.update({f"detector_{name}": value for name, value in quality.items()})
    if config["attack"].get("targeted"):
        target = _targets(config["attack"], data.y)
        results["adversarial_targeted_success_rate"] = float(np.mean(adversarial == target))
    record = {
        "armory_version": None,
        "art_patch_defenses_version": __version__,
        "config": config,
        "results": results,
        "timestamp": int(time.time()),
    }
    keep = np.unique(np.linspace(0, len(data) - 1, N_EXAMPLES).astype(int))  # spread over the class-sorted slice
    examples = {
        "x": data.x[keep], "x_adv": x_adv[keep], "y": data.y[keep], "benign": benign[keep],
        "adversarial": adversarial[keep], "class_names": np.asarray(data.class_names),
    }
    return ScenarioResult(record=record, examples=examples)


def default_output_dir() -> Path:
    """``outputs/evaluation-<time>``, with a suffix if a run started in the same second took that name."""
    base = Path("outputs") / time.strftime("evaluation-%Y%m%d-%H%M%S")
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def with_overrides(config: dict, n: int | None = None, max_iter: int | None = None, seed: int | None = None) -> dict:
    """A copy of a scenario config with the quick-run overrides of ``evaluate --n / --max-iter / --seed``:
    ``dataset.n``; every iteration count of the attack's kwargs (``max_iter``, ``apgd_iter``, each PGD run of an
    ensemble's ``pgd``); ``attack.seed`` (and the attack's own ``seed`` keyword, where it has one)."""
    config = copy.deepcopy(config)
    kwargs = config["attack"].setdefault("kwargs", {}) or {}
    config["attack"]["kwargs"] = kwargs
    if n is not None:
        config["dataset"]["n"] = n
    if max_iter is not None:
        for key in ("max_iter", "apgd_iter"):
            if key in kwargs:
                kwargs[key] = max_iter
        if "pgd" in kwargs:
            kwargs["pgd"] = [[step, max_iter] for step, _ in kwargs["pgd"]]
    if seed is not None:
        config["attack"]["seed"] = seed
        if "seed" in kwargs:
            kwargs["seed"] = seed
    return config


def run_suite(
    source: str | Path | dict | None = None, output_dir: str | Path | None = None, verbose: bool = True, *,
    overwrite: bool = False, n: int | None = None, max_iter: int | None = None, seed: int | None = None,
) -> dict:
    """Run a config or suite (default: the embedded scenario); write JSON, Markdown and PNG reports.

    Before any computation the config is validated (every problem at once, :class:`~art_patch_defenses.evaluation
    .config.ConfigError`) and the output directory created and checked (:class:`~art_patch_defenses.evaluation
    .results.OutputDirError`: not a directory, not writable, or holding another run's results unless
    ``overwrite``). During the run ``manifest.json`` and ``scenarios/<index>-<label>.json`` (each scenario's record
    as soon as it finishes) are kept up to date, all files written atomically. On Ctrl-C (``KeyboardInterrupt``) or
    an error, ``results.json`` and ``report.md`` are written with the scenarios that finished, the manifest is
    marked ``interrupted`` or ``failed``, a warning is logged and the exception re-raised.

    :param overwrite: replace an earlier run's results in ``output_dir`` (only the files a run writes).
    :param n: quick runs: evaluation images, ``max_iter``: attack iterations, ``seed``: the attacks' seed, for
        every scenario (:func:`with_overrides`).
    :return: ``{"_description", "outcomes": [ScenarioResult, ...], "files": {...}, "output_dir"}``.
    """
    source = source if source is not None else DEFAULT_SCENARIO
    suite = load_config(source)
    if n is not None or max_iter is not None or seed is not None:  # checked again, as the user wrote them
        suite = load_config({"_description": suite["_description"],
                             "scenarios": [with_overrides(c, n, max_iter, seed) for c in suite["scenarios"]]})
    output_dir = prepare_output_dir(output_dir if output_dir is not None else default_output_dir(),
                                    overwrite=overwrite)
    manifest = RunManifest(output_dir, suite, "<dict>" if isinstance(source, dict) else str(source))
    scenarios = suite["scenarios"]
    cache: dict = {}
    outcomes: list[ScenarioResult] = []
    files: dict[str, str] = {}
    try:
        for index, config in enumerate(scenarios):
            logger.info("scenario: %s (%d of %d)", " / ".join(scenario_label(config)), index + 1, len(scenarios))
            manifest.start_scenario(index)
            outcome = run_scenario(config, cache, verbose)
            outcomes.append(outcome)
            manifest.scenario_done(index, outcome.record)
        files = write_reports(suite["_description"], outcomes, output_dir)
    except BaseException as error:  # Ctrl-C included: what finished is written before the exception goes on
        status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
        _save_stopped_run(suite, outcomes, manifest, status, error)
        raise
    manifest.close("complete", {**files, "manifest": str(manifest.path)})
    files["manifest"] = str(manifest.path)
    logger.info("results: %s", output_dir)
    return {"_description": suite["_description"], "outcomes": outcomes, "files": files, "output_dir": output_dir}


def _save_stopped_run(suite: dict, outcomes: list[ScenarioResult], manifest: RunManifest, status: str,
                      error: BaseException) -> None:
    """Write the finished scenarios' reports and close the manifest; never mask the exception that stopped the run."""
    total = len(suite["scenarios"])
    try:
        files = write_reports(suite["_description"], outcomes, manifest.output_dir, status=status, total=total)
        manifest.close(status, files, error)
    except BaseException as failure:  # a second Ctrl-C, a full disk: the scenario files are already safe
        logger.error("could not write the reports of the stopped run to %s: %s", manifest.output_dir, failure)
    reason = "interrupted" if status == "interrupted" else f"failed ({type(error).__name__}: {error})"
    logger.warning("evaluation %s: %d of %d scenarios finished; their results are in %s (results.json, %s/, "
                   "manifest.json)", reason, len(outcomes), total, manifest.output_dir, "scenarios")
