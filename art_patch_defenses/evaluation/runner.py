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
import json
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
from art_patch_defenses.evaluation.distributed import (
    ChunkStore,
    DistContext,
    ShardMismatchError,
    UnitStats,
    broadcast_object,
    chunk_seed,
    distributed_session,
    make_chunks,
    sharded_map,
)
from art_patch_defenses.evaluation.metrics import accuracy_interval
from art_patch_defenses.evaluation.report import write_reports
from art_patch_defenses.evaluation.results import (
    SHARD_DIR,
    OutputDirError,
    RunManifest,
    ScenarioResult,
    atomic_path,
    prepare_output_dir,
    scenario_label,
)
from art_patch_defenses.geometry import (
    expand_masks,
    paste_patch,
    patch_area_fraction,
    patch_masks,
    random_locations,
)
from art_patch_defenses.models.checkpoints import weights_sha256

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


def _fixed_target(attack: dict) -> int | None:
    """The class a targeted attack aims at (``targeted_labels`` ``fixed``), or None for an untargeted one."""
    targets = _targets(attack, np.zeros(1, dtype=int))
    return None if targets is None else int(targets[0])


def _attack_component(config: dict, verbose: bool):
    attack = config["attack"]
    component = resolve(attack["module"], attack["name"])
    kwargs = dict(attack.get("kwargs") or {})
    if _takes_keyword(component, "verbose"):  # not every attack has a progress bar to switch
        kwargs.setdefault("verbose", verbose)
    return component, kwargs


def _train_patch(estimator, config: dict, shape: tuple[int, int], verbose: bool) -> tuple[np.ndarray, dict]:
    attack, dataset = config["attack"], config["dataset"]
    seed = int(attack.get("seed", 0))
    component, kwargs = _attack_component(config, verbose)
    seed_art_random_start(seed)  # ART's random starts draw from the global generators: one seed fixes them too
    train = load_dataset(
        dataset["name"], dataset.get("train_split", "train"), n=dataset.get("patch_train_n", 500),
        seed=seed, root=dataset.get("root"), download=dataset.get("download", False),
    )
    patch = component(estimator, train.x, train.y, patch_size=shape, target=_fixed_target(attack), **kwargs)
    return patch, {"patch_trained_on": f"{len(train)} {dataset['name']} {dataset.get('train_split', 'train')} images"}


def attack_locations(config: dict, count: int, image_hw: tuple[int, int]) -> np.ndarray:
    """The ``(count, 2)`` top-left patch places of a scenario's ``count`` images, in slice order: drawn from
    ``attack.seed`` for ``"random"``, else the fixed place."""
    attack = config["attack"]
    shape = attack_patch_shape(attack["patch_size"], image_hw)
    if attack["location"] == "random":
        return random_locations(count, image_hw, shape, int(attack.get("seed", 0)))
    return np.tile(np.asarray(attack["location"], dtype=int), (count, 1))


def run_attack(estimator, config: dict, x: np.ndarray, y: np.ndarray, verbose: bool = True, *,
               locations: np.ndarray | None = None, patch: tuple[np.ndarray, dict] | None = None,
               seed: int | None = None):
    """Run the scenario's attack; return adversarial images, the patch masks ``(n, H, W)`` and attack facts.

    The keyword arguments serve a sharded run, where ``x`` is one chunk of the slice:

    :param locations: the images' patch places (default: :func:`attack_locations` of these images).
    :param patch: ``(patch, facts)`` of a universal patch already trained (``_train_patch``), pasted instead of
        training one.
    :param seed: seeds ART's random starts and the attack's own ``seed`` keyword instead of ``attack.seed``.
    """
    attack = config["attack"]
    image_hw = x.shape[2:4]
    shape = attack_patch_shape(attack["patch_size"], image_hw)
    attack_seed = int(attack.get("seed", 0))
    targets = _targets(attack, y)
    if locations is None:
        locations = attack_locations(config, len(x), image_hw)
    component, kwargs = _attack_component(config, verbose)
    if seed is not None and _names_keyword(component, "seed"):
        kwargs["seed"] = seed
    if attack["type"] == "patch":
        trained, facts = patch if patch is not None else _train_patch(estimator, config, shape, verbose)
        facts = dict(facts)
        x_adv, masks = paste_patch(x, trained, locations)
    else:
        seed_art_random_start(attack_seed if seed is None else seed)  # ART's random starts: the global generators
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
        location=attack["location"], location_seed=attack_seed,
    )
    return x_adv.astype(np.float32), masks, facts


def _names_keyword(target, name: str) -> bool:
    """Whether ``target`` names the keyword ``name`` itself (not only through ``**kwargs``)."""
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _takes_keyword(target, name: str) -> bool:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True  # no signature to read: pass it, as before
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def evaluate_samples(estimator, config: dict, x: np.ndarray, y: np.ndarray, batch_size: int, verbose: bool = True,
                     *, locations: np.ndarray | None = None, patch: tuple[np.ndarray, dict] | None = None,
                     seed: int | None = None, certify_seed: int | None = None,
                     ) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Predict, attack, predict again and certify ``x``; return the per-sample outcomes, the adversarial images
    and the attack's facts.

    The outcomes are arrays with one entry per image: ``label``, ``benign`` and ``adversarial`` predictions (-1:
    abstain / alert), ``linf`` (the largest change) and ``outside`` (the largest change outside the patch);
    ``certified`` for a certifier (its own ``certify``); ``detector_hits`` / ``_predicted`` / ``_true`` (pixel
    counts) for a patch detector. ``locations``, ``patch`` and ``seed`` are :func:`run_attack`'s; ``certify_seed``
    is passed to ``certify`` as its ``seed`` (a sharded run's per-chunk seed).
    """
    certifier = isinstance(estimator, CertifierMixin)
    # A certifier whose certificate is on its own prediction gives the clean predictions from certify below.
    benign = (None if certifier and estimator.certify_gives_prediction
              else labels_in_batches(estimator, x, batch_size, "predict clean images", verbose))
    x_adv, masks, facts = run_attack(estimator, config, x, y, verbose, locations=locations, patch=patch, seed=seed)
    adversarial = labels_in_batches(estimator, x_adv, batch_size, "predict attacked images", verbose)
    change = np.abs(x_adv - x).reshape(len(x), -1)
    outside = ~expand_masks(masks, x).astype(bool).reshape(len(x), -1)
    samples = {"label": np.asarray(y), "benign": benign, "adversarial": adversarial, "linf": change.max(1),
               "outside": np.where(outside, change, 0.0).max(1)}
    if certifier:  # its own certificate (for its configured patch), clean images
        seeded = {} if certify_seed is None else {"seed": certify_seed}
        certification = estimator.certify(x, y, batch_size=batch_size, verbose=verbose, **seeded)
        samples["certified"] = certification.certified
        if benign is None:
            samples["benign"] = np.asarray(certification.prediction)
    for defence in estimator.preprocessing_defences or []:
        if hasattr(defence, "masks"):  # a patch detector: how well its segmentation found the attacker's patch
            found, true = np.asarray(defence.masks(x_adv, dilated=False), bool), np.asarray(masks, bool)
            samples.update(detector_hits=(found & true).reshape(len(x), -1).sum(1),
                           detector_predicted=found.reshape(len(x), -1).sum(1),
                           detector_true=true.reshape(len(x), -1).sum(1))
    return samples, x_adv, facts


def _detector_quality(hits: int, predicted: int, true: int) -> dict[str, float]:
    """:func:`~art_patch_defenses.evaluation.metrics.mask_precision_recall_f1` from pooled pixel counts."""
    precision = float(np.float64(hits) / predicted) if predicted else 0.0
    recall = float(np.float64(hits) / true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def summarise(config: dict, estimator, samples: dict[str, np.ndarray], facts: dict, seconds: float) -> dict:
    """The Armory-shaped ``results`` of a scenario from its per-sample outcomes (:func:`evaluate_samples`)."""
    y, benign, adversarial = samples["label"], samples["benign"], samples["adversarial"]
    n = len(y)
    results = {
        "benign_mean_categorical_accuracy": float(np.mean(benign == y)),
        "benign_accuracy_interval_95": accuracy_interval(int(np.sum(benign == y)), n),
        "adversarial_mean_categorical_accuracy": float(np.mean(adversarial == y)),
        "adversarial_accuracy_interval_95": accuracy_interval(int(np.sum(adversarial == y)), n),
        "perturbation_mean_linf": float(samples["linf"].mean()),
        "max_change_outside_patch": float(samples["outside"].max(initial=0.0)),
        "abstain_rate_benign": float(np.mean(benign == -1)),
        "abstain_rate_adversarial": float(np.mean(adversarial == -1)),
        "num_samples": int(n),
        "weights_sha256": weights_sha256(estimator),
        "seconds": round(seconds, 2),
        **facts,
    }
    if "certified" in samples:
        certified = np.asarray(samples["certified"], bool)
        results["certified_accuracy"] = float(np.mean(certified))
        results["certified_accuracy_interval_95"] = accuracy_interval(int(np.sum(certified)), n)
        results["certified_patch_pixels"] = int(estimator.patch_size)
        results["certificate_kind"] = estimator.certificate_kind
        if estimator.certificate_kind == DETECTION:  # the detection guarantee: right, or an alert
            results["adversarial_right_or_alert"] = float(np.mean((adversarial == y) | (adversarial == ABSTAIN)))
    if "detector_hits" in samples:
        quality = _detector_quality(int(np.sum(samples["detector_hits"])), int(np.sum(samples["detector_predicted"])),
                                    int(np.sum(samples["detector_true"])))
        results.update({f"detector_{name}": value for name, value in quality.items()})
    if config["attack"].get("targeted"):
        target = _targets(config["attack"], y)
        results["adversarial_targeted_success_rate"] = float(np.mean(adversarial == target))
    return results


def _record(config: dict, results: dict) -> dict:
    return {"armory_version": None, "art_patch_defenses_version": __version__, "config": config,
            "results": results, "timestamp": int(time.time())}


def _example_positions(count: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, N_EXAMPLES).astype(int))  # spread over the class-sorted slice


def _load_eval_data(config: dict):
    dataset = config["dataset"]
    return load_dataset(
        dataset["name"], dataset.get("eval_split", "test"), n=dataset.get("n"), seed=dataset.get("seed", 0),
        root=dataset.get("root"), download=dataset.get("download", False),
    )


def run_scenario(config: dict, cache: dict | None = None, verbose: bool = True) -> ScenarioResult:
    """Evaluate one validated scenario config; return its Armory-shaped record and example images."""
    start = time.time()
    data = _load_eval_data(config)
    estimator = build_estimator(config, cache)
    batch_size = int(config["dataset"].get("batch_size", 128))
    samples, x_adv, facts = evaluate_samples(estimator, config, data.x, data.y, batch_size, verbose)
    results = summarise(config, estimator, samples, facts, time.time() - start)
    keep = _example_positions(len(data))
    examples = {
        "x": data.x[keep], "x_adv": x_adv[keep], "y": data.y[keep], "benign": samples["benign"][keep],
        "adversarial": samples["adversarial"][keep], "class_names": np.asarray(data.class_names),
    }
    return ScenarioResult(record=_record(config, results), examples=examples)


#: Per-sample outcomes kept in a sharded run's chunk files, with the JSON type each is read back as.
SAMPLE_FIELDS = {"label": int, "benign": int, "adversarial": int, "linf": np.float32, "outside": np.float32,
                 "certified": bool, "detector_hits": int, "detector_predicted": int, "detector_true": int}


def run_scenario_sharded(config: dict, store_dir: str | Path, context: DistContext | None = None,
                         cache: dict | None = None, verbose: bool = True, *, images_per_class: int = 1,
                         resume: bool = False) -> tuple[ScenarioResult | None, list[UnitStats]]:
    """Evaluate one scenario in fixed chunks spread over the ranks (:mod:`~art_patch_defenses.evaluation
    .distributed`); each chunk's per-sample records go to ``store_dir`` as soon as it finishes, and finished chunks
    are read back when ``resume``. The merged result does not depend on the number of ranks.

    Chunk ``c`` is attacked with ART's random starts and the attack's own ``seed`` set to ``chunk_seed(attack.seed,
    c)`` and certified with ``seed=chunk_seed(<the certifier's seed or 0>, c)``; patch places are drawn for the
    whole slice from ``attack.seed``; a universal patch is trained once (seeded with ``attack.seed``) and kept in
    the store.

    :return: the merged :class:`ScenarioResult` on rank 0 (None on the others) and every rank's
        :class:`~art_patch_defenses.evaluation.distributed.UnitStats`.
    """
    context = context or DistContext()
    start = time.time()
    data = _load_eval_data(config)
    estimator = build_estimator(config, cache)
    attack = config["attack"]
    batch_size = int(config["dataset"].get("batch_size", 128))
    image_hw = tuple(data.x.shape[2:4])
    shape = attack_patch_shape(attack["patch_size"], image_hw)
    locations = attack_locations(config, len(data), image_hw)
    chunks = make_chunks(data.y, images_per_class)
    keep = _example_positions(len(data))
    seed = int(attack.get("seed", 0))
    certifier_seed = int(getattr(estimator, "seed", 0) or 0) if isinstance(estimator, CertifierMixin) else 0
    key = {"kind": "evaluate", "config": config, "images": len(data), "images_per_class": images_per_class,
           "art_patch_defenses_version": __version__, "weights_sha256": weights_sha256(estimator)}
    store = ChunkStore(store_dir, key, resume=resume, context=context)
    state: dict = {}

    def prepare() -> None:
        if attack["type"] == "patch":
            state["patch"] = _stored_patch(store, estimator, config, shape, verbose)

    def compute(unit: int) -> dict:
        began = time.time()
        positions = chunks[unit]
        samples, x_adv, facts = evaluate_samples(
            estimator, config, data.x[positions], data.y[positions], batch_size, verbose=False,
            locations=locations[positions], patch=state.get("patch"), seed=chunk_seed(seed, unit),
            certify_seed=chunk_seed(certifier_seed, unit))
        shown = np.isin(positions, keep)
        return {"chunk": unit, "size": int(len(positions)), "seconds": round(time.time() - began, 2),
                "samples": {"index": positions, **samples}, "facts": facts,
                "arrays": {"example_index": positions[shown], "example_x_adv": x_adv[shown]}}

    payloads, stats = sharded_map(context, store, "chunk", len(chunks), compute, before_compute=prepare)
    if not context.is_main:
        return None, stats
    merged = {name: [] for name in ["index", *SAMPLE_FIELDS]}
    for payload in payloads:
        for name in merged:
            if name in payload["samples"]:
                merged[name].extend(payload["samples"][name])
    order = np.argsort(np.asarray(merged["index"]), kind="stable")
    samples = {name: np.asarray(values, dtype=SAMPLE_FIELDS[name])[order]
               for name, values in merged.items() if name != "index" and len(values) == len(order)}
    if not np.array_equal(np.asarray(merged["index"])[order], np.arange(len(data))):
        raise ShardMismatchError(f"the chunks in {store.directory} do not cover the {len(data)} images once each")
    facts = {key: value for key, value in payloads[0]["facts"].items() if key != "attack_report"}
    reports = [payload["facts"].get("attack_report") for payload in payloads]
    if all(report is not None for report in reports):
        facts["attack_report"] = merge_attack_reports(reports, [payload["size"] for payload in payloads])
    facts["sharding"] = {"chunks": len(chunks), "images_per_class_per_chunk": images_per_class,
                         "chunk_seed": "numpy SeedSequence([seed, chunk]): attack.seed for the attack, the "
                                       "certifier's seed for certify"}
    results = summarise(config, estimator, samples, facts, time.time() - start)
    x_adv = {}
    for payload in payloads:
        arrays = payload.get("arrays") or {}
        for index, image in zip(arrays.get("example_index", []), arrays.get("example_x_adv", []), strict=True):
            x_adv[int(index)] = image
    examples = {
        "x": data.x[keep], "x_adv": np.stack([x_adv[int(i)] for i in keep]), "y": data.y[keep],
        "benign": samples["benign"][keep], "adversarial": samples["adversarial"][keep],
        "class_names": np.asarray(data.class_names),
    }
    return ScenarioResult(record=_record(config, results), examples=examples), stats


def _stored_patch(store: ChunkStore, estimator, config: dict, shape: tuple[int, int],
                  verbose: bool) -> tuple[np.ndarray, dict]:
    """The scenario's universal patch from the store, or trained (as :func:`run_attack` would) and stored."""
    path = store.directory / "patch.npz"
    if store.resume and path.exists():
        try:
            with np.load(path) as stored:
                return stored["patch"], json.loads(str(stored["facts"]))
        except (OSError, ValueError, KeyError) as error:
            logger.warning("stored patch %s is unreadable (%s); training it again", path, error)
    patch, facts = _train_patch(estimator, config, shape, verbose)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, patch=patch, facts=np.asarray(json.dumps(facts)))
    return patch, facts


def merge_attack_reports(reports: list[dict], sizes: list[int]) -> dict:
    """One ensemble :class:`~art_patch_defenses.attacks.ensemble.AttackReport` (as a dict) from the reports of
    chunks of ``sizes`` images: every accuracy pooled over the images (counts summed), the rest from the first."""

    def pooled(values: list[float | None]) -> float | None:
        if any(value is None for value in values):
            return None
        return sum(round(value * size) for value, size in zip(values, sizes, strict=True)) / sum(sizes)

    merged = dict(reports[0])
    for name in ("clean_accuracy", "white_box_accuracy", "random_search_accuracy", "ensemble_accuracy"):
        if name in merged:
            merged[name] = pooled([report.get(name) for report in reports])
    if isinstance(merged.get("accuracy_after"), dict):
        merged["accuracy_after"] = {name: pooled([report["accuracy_after"].get(name) for report in reports])
                                    for name in merged["accuracy_after"]}
    return merged


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
    sharded: bool | None = None, resume: bool = False, images_per_class: int = 1,
    context: DistContext | None = None,
) -> dict:
    """Run a config or suite (default: the embedded scenario); write JSON, Markdown and PNG reports.

    Before any computation the config is validated (every problem at once, :class:`~art_patch_defenses.evaluation
    .config.ConfigError`) and the output directory created and checked (:class:`~art_patch_defenses.evaluation
    .results.OutputDirError`: not a directory, not writable, or holding another run's results unless
    ``overwrite`` or, for the same config, ``resume``). During the run ``manifest.json`` and
    ``scenarios/<index>-<label>.json`` (each scenario's record as soon as it finishes) are kept up to date, all files
    written atomically. On Ctrl-C (``KeyboardInterrupt``) or an error, ``results.json`` and ``report.md`` are
    written with the scenarios that finished, the manifest is marked ``interrupted`` or ``failed``, a warning is
    logged and the exception re-raised.

    A launch by ``torchrun`` (``WORLD_SIZE`` set) joins its process group and runs sharded: each rank evaluates its
    chunks of every scenario, rank 0 merges them and writes the reports (the other ranks return no outcomes).

    :param overwrite: replace an earlier run's results in ``output_dir`` (only the files a run writes).
    :param n: quick runs: evaluation images, ``max_iter``: attack iterations, ``seed``: the attacks' seed, for
        every scenario (:func:`with_overrides`).
    :param sharded: evaluate in fixed chunks with per-chunk records under ``output_dir/shards``
        (:func:`run_scenario_sharded`; default: when distributed or ``resume``). One process and N give the same
        results.
    :param resume: continue a sharded run of the same config in ``output_dir``: finished chunks are read back.
    :param images_per_class: images of each class per chunk (shards differ by at most this many per class).
    :param context: the process group to use (default: joined from torchrun's variables, or one process).
    :return: ``{"_description", "outcomes": [ScenarioResult, ...], "files": {...}, "output_dir"}``.
    """
    source = source if source is not None else DEFAULT_SCENARIO
    suite = load_config(source)
    if n is not None or max_iter is not None or seed is not None:  # checked again, as the user wrote them
        suite = load_config({"_description": suite["_description"],
                             "scenarios": [with_overrides(c, n, max_iter, seed) for c in suite["scenarios"]]})
    make_chunks(np.zeros(1, dtype=int), images_per_class)  # checks images_per_class before anything is written
    with distributed_session(_device_type(suite), context) as context:
        sharded = bool(sharded) or resume or context.distributed
        return _run_suite(source, suite, output_dir, verbose, overwrite, sharded, resume, images_per_class, context)


def _device_type(suite: dict) -> str | None:
    types = {(config.get("sysconfig") or {}).get("device_type") for config in suite["scenarios"]}
    return "cpu" if types == {"cpu"} else None


def _run_suite(source, suite: dict, output_dir, verbose: bool, overwrite: bool, sharded: bool, resume: bool,
               images_per_class: int, context: DistContext) -> dict:
    prepared: tuple[str | None, str | None] = (None, None)
    if context.is_main:  # one rank checks and prepares the directory; the others learn how that went
        try:
            path = prepare_output_dir(output_dir if output_dir is not None else default_output_dir(),
                                      overwrite=overwrite, resume=suite if resume else None)
            prepared = (str(path), None)
        except OutputDirError as error:
            prepared = (None, str(error))
    prepared = broadcast_object(context, prepared)
    if prepared[1] is not None:
        raise OutputDirError(prepared[1])
    output_dir = Path(prepared[0])
    manifest = None
    if context.is_main:
        manifest = RunManifest(output_dir, suite, "<dict>" if isinstance(source, dict) else str(source))
        if sharded:
            manifest.data["sharding"] = {"world_size": context.world_size, "backend": context.backend,
                                         "images_per_class_per_chunk": images_per_class, "resumed": resume}
            manifest.write()
    scenarios = suite["scenarios"]
    cache: dict = {}
    outcomes: list[ScenarioResult] = []
    files: dict[str, str] = {}
    show = verbose and context.is_main
    try:
        for index, config in enumerate(scenarios):
            if context.is_main:
                logger.info("scenario: %s (%d of %d)", " / ".join(scenario_label(config)), index + 1, len(scenarios))
                manifest.start_scenario(index)
            if sharded:
                store = output_dir / SHARD_DIR / f"evaluate-{index:02d}"
                outcome, stats = run_scenario_sharded(config, store, context, cache, show,
                                                      images_per_class=images_per_class, resume=resume)
            else:
                outcome, stats = run_scenario(config, cache, verbose), None
            if context.is_main:
                if stats is not None:
                    manifest.note_chunks(index, stats)
                outcomes.append(outcome)
                manifest.scenario_done(index, outcome.record)
        if context.is_main:
            files = write_reports(suite["_description"], outcomes, output_dir)
    except BaseException as error:  # Ctrl-C included: what finished is written before the exception goes on
        if context.is_main:
            status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
            _save_stopped_run(suite, outcomes, manifest, status, error)
        raise
    if context.is_main:
        manifest.close("complete", {**files, "manifest": str(manifest.path)})
        files["manifest"] = str(manifest.path)
        logger.info("results: %s", output_dir)
    return {"_description": suite["_description"], "outcomes": outcomes, "files": files, "output_dir": output_dir,
            "rank": context.rank, "world_size": context.world_size}


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
