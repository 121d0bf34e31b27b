"""Certificate soundness as a feature: attack the certified samples of a certifier and count violations.

A certificate says that no patch of the certified size, anywhere, changes the certified output (certified
detection: without an alert). :func:`verify_certificates` takes the samples a certifier's own ``certify`` certifies
(right and certified), pastes a patch at several placements per sample, optimises it white-box against the
certifier's ``attack_surrogate()``, and counts the attacked samples whose defended output the certifier's
``violates`` calls a contradiction. A sound certifier gives 0. ``fooled_base`` counts the attacks that fooled
the undefended part (``predict_base``): when it is 0 the check could not have failed, and the report says
``"conclusive": false``.

A certifier that can say where its undefended part is weakest (``weakest_placements`` and ``base_surrogate``, as
robust masking does) gets a second attack aimed at that part: on the certified samples of the slice where some
patch could fool it at all, a targeted patch at those places, towards that class, against ``base_surrogate()``.
Its patches are judged like the first attack's (``base_attack`` in the report; the totals count both), so a
certificate whose undefended part is itself hard to fool is still checked where fooling it is possible.

It speaks to the certifier protocol only (:mod:`art_patch_defenses.certification`); what differs is the threat
model of the certificate kind:

- recovery and detection certificates cover any patch of the certified size: L-inf masked PGD (eps 1) inside the
  patch, judged by ``predict``;
- a region-L2 certificate (MRS) covers L2 changes inside a region: each sample is certified with the patch region
  as its region, attacked by L2 masked PGD with expectation over the noise inside 0.99 x its radius, and judged by
  ``predict`` in that region with fresh noise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_patch_defenses import __version__
from art_patch_defenses.attacks import masked_pgd
from art_patch_defenses.attacks.eot import masked_pgd_eot
from art_patch_defenses.certification import ABSTAIN, REGION_L2, CertificationResult, CertifierMixin
from art_patch_defenses.evaluation.distributed import (
    ChunkStore,
    DistContext,
    chunk_seed,
    make_chunks,
    merge_counts,
    sharded_map,
)
from art_patch_defenses.geometry import all_locations, expand_masks, patch_masks, random_locations
from art_patch_defenses.models.checkpoints import weights_sha256
from art_patch_defenses.validation import check_labels

logger = logging.getLogger(__name__)

#: places per sample of the attack on the undefended part, and its random starts' seed offset
BASE_ATTACK_PLACES = 4
BASE_ATTACK_SEED_OFFSET = 1_000_003


def require_certifier(estimator) -> CertifierMixin:
    """``estimator`` if it follows the certifier protocol, else a ``ValueError`` that says so."""
    if not isinstance(estimator, CertifierMixin):
        raise ValueError(f"{type(estimator).__name__} is not a certifier: it does not follow the certifier protocol "
                         "(art_patch_defenses.certification.CertifierMixin)")
    return estimator


def _spread(indices: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``indices`` spread evenly (a class-balanced slice is sorted by class)."""
    if len(indices) <= count:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, count).astype(int))]


def verify_certificates(
    estimator, x: np.ndarray, y: np.ndarray, patch_size: int | None = None, n_certified: int = 200,
    placements: int = 4, max_iter: int = 10, eps_step: float = 0.1, batch_size: int = 64, seed: int = 0,
    verbose: bool = True, grid_stride: int | None = None, certified: CertificationResult | None = None,
    *, shards: ShardOptions | None = None,
) -> dict[str, Any]:
    """Attack up to ``n_certified`` certified samples of ``x`` at ``placements`` random places each (or, with
    ``grid_stride``, at every place of a grid of that stride, edges included).

    :param estimator: a certifier (the certifier protocol), attacked white-box through its ``attack_surrogate``.
    :param patch_size: may only repeat the certifier's own patch size (its certificate's; MRS: the side of the
        square regions it is certified in); default: that size.
    :param max_iter: iterations of every PGD; ``eps_step`` its L-inf step (region-L2: a quarter of the radius).
    :param seed: fixes the placements and the attacks' random starts.
    :param certified: the result of this certifier's own ``certify(x, y)``, to reuse instead of certifying again
        (recovery and detection certificates; a region-L2 certificate is computed per placement).
    :param shards: run sharded (:class:`ShardOptions`): ``certify`` in fixed chunks of the slice (chunk ``c`` with
        ``seed=chunk_seed(<the certifier's seed or 0>, c)``), then the attack batches, spread over the ranks and
        each written to the store as it finishes; a region-L2 certifier's images are spread the same way. The
        counts do not depend on the number of ranks.
    :return: counts: ``certified_available`` (of ``len(x)``), ``samples`` (certified samples attacked),
        ``attacked`` (samples x placements), ``fooled_base``, ``abstained`` (attacked outputs that abstained or
        alerted), ``violations``, ``conclusive``, the attack and budget.
    """
    certifier = require_certifier(estimator)
    certifier._own_patch_size(patch_size)
    x = certifier.check_inputs(x)
    y = check_labels(y, len(x), certifier.nb_classes)
    checked = [("n_certified", n_certified), ("placements", placements), ("max_iter", max_iter),
               ("batch_size", batch_size)] + ([("grid_stride", grid_stride)] if grid_stride is not None else [])
    for name, value in checked:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    start = time.time()
    shape = (int(certifier.patch_size), int(certifier.patch_size))
    image_hw = tuple(x.shape[2:]) if certifier.channels_first else tuple(x.shape[1:3])
    grid = None if grid_stride is None else all_locations(image_hw, shape, grid_stride)

    def places(count: int, offset: int) -> np.ndarray:
        """``count`` samples' placements, ``len(grid)`` or ``placements`` per sample, sample by sample."""
        if grid is not None:
            return np.tile(grid, (count, 1))
        return random_locations(count * placements, image_hw, shape, seed + offset)

    per_sample = placements if grid is None else len(grid)
    if certified is not None and (len(certified) != len(x) or certified.kind != certifier.certificate_kind
                                  or certified.patch_size != certifier.patch_size):
        raise ValueError("certified must be this certifier's own certify(x, y) result for these images")
    task = _VerifyTask(certifier, x, y, shape, n_certified, per_sample, places, max_iter, eps_step, batch_size,
                       seed, verbose)
    if shards is not None:
        key = {"kind": "verify", "config": shards.config, "images": len(x), "patch_size": int(certifier.patch_size),
               "n_certified": n_certified, "placements": placements, "max_iter": max_iter, "eps_step": eps_step,
               "batch_size": batch_size, "seed": seed, "grid_stride": grid_stride,
               "images_per_class": shards.images_per_class, "art_patch_defenses_version": __version__,
               "weights_sha256": weights_sha256(certifier)}
        store = ChunkStore(shards.directory, key, resume=shards.resume, context=shards.context)
        counts = _verify_sharded(task, store, shards, certified)
    elif certifier.certificate_kind == REGION_L2:
        counts = _verify_region_l2(task)
    else:
        counts = _verify_patch_certificate(task, certified)
    counts["placement"] = (f"every place of a stride-{grid_stride} grid, edges included" if grid is not None
                           else f"uniformly random, seed {seed} + sample offset")
    return {"certifier": type(certifier).__name__, "certificate_kind": certifier.certificate_kind,
            "patch_pixels": list(shape), "images": len(x), **counts,
            "conclusive": counts["fooled_base"] > 0, "seconds": round(time.time() - start, 1)}


@dataclass
class ShardOptions:
    """How :func:`verify_certificates` runs sharded: the chunk store's directory, the scenario config (part of
    the store's key), images of each class per chunk, whether to read finished units back, the process group."""

    directory: Path
    config: dict
    images_per_class: int = 1
    resume: bool = False
    context: DistContext = field(default_factory=DistContext)


@dataclass
class _VerifyTask:
    certifier: Any
    x: np.ndarray
    y: np.ndarray
    shape: tuple[int, int]
    n_certified: int
    placements: int
    places: Any
    max_iter: int
    eps_step: float
    batch_size: int
    seed: int
    verbose: bool

    @property
    def per_batch(self) -> int:
        return max(1, self.batch_size // self.placements)

    def attack_batch(self, picks: np.ndarray, start: int, surrogate) -> dict[str, int]:
        """Attack the certified samples ``picks`` (the batch at ``start`` of all picks) at their placements."""
        chosen = np.repeat(picks, self.placements)
        images, labels = self.x[chosen], self.y[chosen]
        masks = expand_masks(patch_masks(tuple(self.x.shape[2:]), self.shape, self.places(len(picks), start)),
                             images)
        x_adv = masked_pgd(surrogate, images, masks, labels, eps=1.0, eps_step=self.eps_step, max_iter=self.max_iter,
                           num_random_init=1, batch_size=len(chosen), verbose=False, seed=self.seed + start)
        return self.judge(x_adv, labels)

    def judge(self, x_adv: np.ndarray, labels: np.ndarray) -> dict[str, int]:
        defended = self.certifier.predict_labels(x_adv)
        return {"attacked": len(labels),
                "fooled_base": int(np.sum(self.certifier.predict_base(x_adv).argmax(1) != labels)),
                "abstained": int(np.sum(defended == ABSTAIN)),
                "violations": int(np.sum(self.certifier.violates(defended, labels)))}

    def base_attack_plan(self, certified: np.ndarray) -> dict[str, Any] | None:
        """The (sample, place, class) triples of the attack on the undefended part: of every certified sample
        whose slack allows fooling it somewhere (up to ``n_certified`` of them, spread), its weakest places (up to
        ``placements``) where the slack allows it (None: the certifier cannot say)."""
        if not hasattr(self.certifier, "weakest_placements"):
            return None
        checked = np.flatnonzero(certified)
        if len(checked) == 0:
            return {"checked": 0, "foolable": 0, "index": np.zeros(0, int), "locations": np.zeros((0, 2), int),
                    "targets": np.zeros(0, int)}
        locations, targets, slack = self.certifier.weakest_placements(
            self.x[checked], self.y[checked], count=min(self.placements, BASE_ATTACK_PLACES), seed=self.seed)
        keep = slack <= 0
        foolable = np.flatnonzero(keep.any(axis=1))
        keep[np.setdiff1d(foolable, _spread(foolable, self.n_certified))] = False  # at most n_certified samples
        return {"checked": int(len(checked)), "foolable": int(len(foolable)),
                "index": np.repeat(checked, keep.shape[1])[keep.ravel()], "locations": locations[keep],
                "targets": targets[keep]}

    def base_attack_batch(self, plan: dict[str, Any], start: int, surrogate) -> dict[str, int]:
        """Targeted masked PGD on the undefended part for the plan's triples ``start .. start + batch_size``."""
        index = plan["index"][start : start + self.batch_size]
        images, labels = self.x[index], self.y[index]
        masks = expand_masks(patch_masks(tuple(self.x.shape[2:]), self.shape,
                                         plan["locations"][start : start + self.batch_size]), images)
        x_adv = masked_pgd(surrogate, images, masks, plan["targets"][start : start + self.batch_size], eps=1.0,
                           eps_step=self.eps_step, max_iter=self.max_iter, num_random_init=1, targeted=True,
                           batch_size=len(index), verbose=False, seed=self.seed + BASE_ATTACK_SEED_OFFSET + start)
        return self.judge(x_adv, labels)

    def patch_counts(self, certified: np.ndarray, picks: np.ndarray, counts: dict[str, int], surrogate,
                     plan: dict[str, Any] | None = None, base: dict[str, int] | None = None) -> dict:
        report = {"certified_available": int(certified.sum()), "samples": int(len(picks)),
                  "placements_per_sample": self.placements, "attacked": int(len(picks) * self.placements),
                  "fooled_base": counts.get("fooled_base", 0), "abstained": counts.get("abstained", 0),
                  "violations": counts.get("violations", 0),
                  "attack": {"name": f"masked PGD against {type(surrogate).__name__} (attack_surrogate), judged by "
                                     "the certifier's predict", "norm": "inf", "eps": 1.0, "eps_step": self.eps_step,
                             "max_iter": self.max_iter, "num_random_init": 1,
                             "random_start_seed": f"{self.seed} + batch offset"}}
        if plan is None:
            return report
        base = {name: (base or {}).get(name, 0) for name in ("attacked", "fooled_base", "abstained", "violations")}
        for name, value in base.items():
            report[name] += value
        report["base_attack"] = {
            "what": "targeted masked PGD against base_surrogate() at the certifier's weakest_placements (up to "
                    f"{BASE_ATTACK_PLACES} per sample, where the slack allows fooling the undefended part), towards "
                    "their classes, on the certified samples of the slice where it can be fooled (up to n_certified, "
                    "spread); judged by predict like the first attack and counted in the totals",
            "certified_checked": plan["checked"], "foolable_in_principle": plan["foolable"], **base,
            "norm": "inf", "eps": 1.0, "eps_step": self.eps_step, "max_iter": self.max_iter,
            "random_start_seed": f"{self.seed} + {BASE_ATTACK_SEED_OFFSET} + batch offset"}
        return report

    def region_l2_image(self, i: int) -> dict[str, int]:
        """Certify image ``i`` with each placement's patch region as its region, attack inside 0.99 x the radius
        (L2, EOT over the noise), and re-classify in that region with fresh noise."""
        certifier, x, y, seed = self.certifier, self.x, self.y, self.seed
        masks = patch_masks(tuple(x.shape[2:]), self.shape, self.places(1, i))
        images = np.repeat(x[i : i + 1], self.placements, axis=0)
        labels = np.repeat(y[i : i + 1], self.placements)
        result = certifier.certify(images, labels, mask=masks, seed=seed + i)
        outcome = {"certified": int(result.certified.any()), "attacked": 0, "fooled_base": 0, "abstained": 0,
                   "violations": 0}
        for k in np.flatnonzero(result.certified):
            radius = float(result.radius[k])
            x_adv = masked_pgd_eot(certifier, images[k : k + 1], masks[k : k + 1], labels[k : k + 1], norm=2,
                                   eps=0.99 * radius, eps_step=radius / 4, max_iter=self.max_iter, eot_samples=8,
                                   restarts=1, seed=seed + i)
            outcome["attacked"] += 1
            outcome["fooled_base"] += int(certifier.predict_base(x_adv).argmax(1)[0] != y[i])
            judged = certifier.predict_labels(x_adv, mask=masks[k : k + 1], seed=seed + i + 1)
            outcome["abstained"] += int(judged[0] == ABSTAIN)
            outcome["violations"] += int(certifier.violates(judged, labels[k : k + 1])[0])
        return outcome


def _verify_region_l2(task: _VerifyTask) -> dict:
    """Images in order until ``n_certified`` of them were certified (:meth:`_VerifyTask.region_l2_image`)."""
    outcomes, certified = [], 0
    for i in tqdm(range(len(task.x)), desc="verify", disable=not task.verbose):
        if certified >= task.n_certified:
            break
        outcomes.append(task.region_l2_image(i))
        certified += outcomes[-1]["certified"]
    return _region_l2_counts(task, outcomes)


def _region_l2_counts(task: _VerifyTask, outcomes: list[dict[str, int]]) -> dict:
    """The region-L2 counts of per-image outcomes in image order, stopping after ``n_certified`` certified ones."""
    scanned = samples = 0
    total = {"attacked": 0, "fooled_base": 0, "abstained": 0, "violations": 0}
    for outcome in outcomes:
        if samples >= task.n_certified:
            break
        scanned += 1
        samples += outcome["certified"]
        for name in total:
            total[name] += outcome[name]
    return {"certified_available": samples, "certified_available_of": scanned, "samples": samples,
            "placements_per_sample": task.placements, **total,
            "attack": {"name": "L2 masked PGD with EOT over the noise inside the region (attacks.eot.masked_pgd_eot)",
                       "norm": 2, "eps": "0.99 x certified radius", "eps_step": "radius / 4",
                       "max_iter": task.max_iter, "eot_samples": 8,
                       "check": "the certifier's predict in the region, fresh noise"}}


def _verify_patch_certificate(task: _VerifyTask, result: CertificationResult | None) -> dict:
    certified = (result or task.certifier.certify(task.x, task.y)).certified
    picks = _spread(np.flatnonzero(certified), task.n_certified)
    surrogate = task.certifier.attack_surrogate()
    counts: dict[str, int] = {}
    for start in tqdm(range(0, len(picks), task.per_batch), desc="verify", disable=not task.verbose):
        counts = merge_counts([counts, task.attack_batch(picks[start : start + task.per_batch], start, surrogate)])
    plan, base = task.base_attack_plan(certified), {}
    if plan is not None and len(plan["index"]):
        base_surrogate = task.certifier.base_surrogate()
        base = merge_counts([task.base_attack_batch(plan, start, base_surrogate)
                             for start in range(0, len(plan["index"]), task.batch_size)])
    return task.patch_counts(certified, picks, counts, surrogate, plan, base)


def _verify_sharded(task: _VerifyTask, store: ChunkStore, shards: ShardOptions,
                    result: CertificationResult | None) -> dict:
    context, certifier = shards.context, task.certifier
    chunks = make_chunks(task.y, shards.images_per_class)
    if certifier.certificate_kind == REGION_L2:  # every image on its own seed: spread the images, count in order
        def region(unit: int) -> dict:
            return {"outcomes": [task.region_l2_image(int(i)) for i in chunks[unit]], "index": chunks[unit]}

        payloads, _ = sharded_map(context, store, "images", len(chunks), region)
        outcomes = [None] * len(task.x)
        for payload in payloads:
            for i, outcome in zip(payload["index"], payload["outcomes"], strict=True):
                outcomes[i] = outcome
        return _region_l2_counts(task, outcomes)
    if result is None:
        certifier_seed = int(getattr(certifier, "seed", 0) or 0)

        def certify(unit: int) -> dict:
            positions = chunks[unit]
            found = certifier.certify(task.x[positions], task.y[positions], seed=chunk_seed(certifier_seed, unit))
            return {"index": positions, "certified": found.certified}

        payloads, _ = sharded_map(context, store, "certify", len(chunks), certify)
        certified = np.zeros(len(task.x), dtype=bool)
        for payload in payloads:
            certified[np.asarray(payload["index"], dtype=int)] = np.asarray(payload["certified"], dtype=bool)
    else:
        certified = result.certified
    picks = _spread(np.flatnonzero(certified), task.n_certified)
    surrogate = certifier.attack_surrogate()
    starts = list(range(0, len(picks), task.per_batch))
    payloads, _ = sharded_map(context, store, "attack", len(starts), lambda unit: task.attack_batch(
        picks[starts[unit] : starts[unit] + task.per_batch], starts[unit], surrogate))
    plan, base = task.base_attack_plan(certified), {}
    if plan is not None and len(plan["index"]):
        base_surrogate, base_starts = certifier.base_surrogate(), list(range(0, len(plan["index"]), task.batch_size))
        base_payloads, _ = sharded_map(context, store, "base-attack", len(base_starts),
                                       lambda unit: task.base_attack_batch(plan, base_starts[unit], base_surrogate))
        base = merge_counts(base_payloads)
    return task.patch_counts(certified, picks, merge_counts(payloads), surrogate, plan, base)


def verify_suite(source, output_dir=None, n: int | None = None, verbose: bool = True, *,
                 sharded: bool | None = None, resume: bool = False, overwrite: bool = False,
                 images_per_class: int = 1, context: DistContext | None = None,
                 **verify_kwargs: Any) -> dict[str, Any]:
    """``art-patch-defenses verify``: :func:`verify_certificates` for every certifier scenario of a config or
    suite (the model block's estimator at its own patch size, the dataset slice); writes ``verify.json``.

    A launch by ``torchrun`` (``WORLD_SIZE`` set) joins its process group and runs sharded (``verify_certificates``'
    ``shards``), rank 0 writing ``verify.json``; ``sharded`` does the same in one process, with the same counts.

    :param n: evaluation images (default: the config's ``dataset.n``); the first certified ones, spread over the
        slice, are attacked.
    :param resume: read back the finished units of an earlier sharded verify in ``output_dir`` (implies sharded).
    :param overwrite: discard an earlier sharded verify's units in ``output_dir``.
    :param images_per_class: images of each class per chunk of the certify step.
    :return: ``{"reports": [...], "file": path}``; a scenario whose estimator certifies nothing is skipped with
        its reason in ``skipped``.
    """
    import json

    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer (evaluation images), got {n!r}")

    from art_patch_defenses.data import load_dataset
    from art_patch_defenses.evaluation.config import load_config
    from art_patch_defenses.evaluation.distributed import broadcast_object, distributed_session
    from art_patch_defenses.evaluation.results import SHARD_DIR, _remove_artefact, write_atomic
    from art_patch_defenses.evaluation.runner import build_estimator, scenario_label

    suite = load_config(source)
    make_chunks(np.zeros(1, dtype=int), images_per_class)  # checks images_per_class
    with distributed_session(context=context) as context:
        sharded = bool(sharded) or resume or context.distributed
        output_dir = Path(broadcast_object(context, str(output_dir or Path("outputs")
                                                        / time.strftime("verify-%Y%m%d-%H%M%S"))))
        if context.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            if overwrite and (output_dir / SHARD_DIR).is_dir():
                _remove_artefact(output_dir / SHARD_DIR)
        reports, skipped = [], []
        for index, config in enumerate(suite["scenarios"]):
            label = " / ".join(scenario_label(config))
            estimator = build_estimator(config)
            try:
                require_certifier(estimator)
            except ValueError as error:
                skipped.append({"scenario": label, "reason": str(error)})
                continue
            dataset = config["dataset"]
            data = load_dataset(dataset["name"], dataset.get("eval_split", "test"),
                                n=dataset.get("n") if n is None else n, seed=dataset.get("seed", 0),
                                root=dataset.get("root"), download=dataset.get("download", False))
            side = int(estimator.patch_size)
            if context.is_main:
                logger.info("verify: %s, %dx%d patch (the certifier's own), %d images", label, side, side, len(data))
            shards = None if not sharded else ShardOptions(output_dir / SHARD_DIR / f"verify-{index:02d}", config,
                                                           images_per_class, resume, context)
            report = verify_certificates(estimator, data.x, data.y, verbose=verbose and context.is_main,
                                         shards=shards, **verify_kwargs)
            reports.append({"scenario": label, "model": config["model"], "dataset": {**dataset, "n": len(data)},
                            **report})
        path = output_dir / "verify.json"
        if context.is_main:
            write_atomic(path,  # a reader never sees half a file
                         json.dumps({"art_patch_defenses_version": __version__, "reports": reports,
                                     "skipped": skipped, "timestamp": int(time.time())}, indent=2) + "\n")
        return {"reports": reports, "skipped": skipped, "file": path, "rank": context.rank,
                "world_size": context.world_size}
