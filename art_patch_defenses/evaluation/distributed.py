"""Sharded, resumable runs on ``torch.distributed``: the shard plan, the chunk store and the few collectives used.

A launch by ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``) makes ``evaluate``,
``verify`` and their certification run sharded; a plain ``python`` launch stays one process. What a sharded run
computes does not depend on how many processes compute it:

- the evaluation slice is cut into fixed **chunks** of whole *rounds*, round ``k`` holding the ``k``-th image of
  every class (:func:`make_chunks`); a chunk's content depends on the labels and ``images_per_class`` only, never
  on the number of processes;
- chunk ``c`` goes to rank ``c mod world_size`` (:func:`assigned_units`), so the ranks' shards are disjoint, cover
  the slice, have no duplicate (no padding) and differ by at most ``images_per_class`` images per class (one with
  the default chunk of one round);
- every random draw of a chunk (ART's random starts, an attack's ``seed``, a randomised certifier's noise) is seeded
  from the scenario's seed and the chunk's index (:func:`chunk_seed`), never from its rank or its batch neighbours.

Each finished chunk is written at once, atomically, as its own file (:class:`ChunkStore`): its per-sample records
(index, label, predictions, certified, abstain / alert, attack outcome) as JSON and any arrays beside it. A rerun
(``--resume``) reads the finished chunks back and computes only the missing ones; a store written for another
config, seed or chunking is refused with a message saying so (:class:`ShardMismatchError`). Rank 0 gathers every
chunk and merges them, in chunk order, into the ordinary results, so one process and N processes write the same
numbers.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from art_patch_defenses import __version__
from art_patch_defenses.evaluation.results import atomic_path, jsonable, write_json_atomic

logger = logging.getLogger(__name__)

#: The variables ``torchrun`` sets for every worker; ``WORLD_SIZE`` marks a distributed launch.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
#: Overrides the process-group backend (default: ``nccl`` when CUDA is available and the device is not ``cpu``,
#: else ``gloo``).
BACKEND_VARIABLE = "ART_PATCH_DEFENSES_DIST_BACKEND"
#: How long a collective waits for the slowest rank (a rank with more chunks, a patch still training).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=12)
#: Testing aid: ``"<count>"`` or ``"<rank>:<count>"`` makes a process (or that rank) raise
#: :class:`InjectedFailure` after it has written ``count`` chunks, as a rank that dies mid-run.
FAIL_AFTER_VARIABLE = "ART_PATCH_DEFENSES_TEST_FAIL_AFTER"


class DistributedError(ValueError):
    """A distributed launch that cannot run: missing or malformed torchrun variables, no ``torch.distributed``."""


class ShardMismatchError(ValueError):
    """A chunk store holds the chunks of another config, seed or chunking (or a damaged file of its own)."""


class InjectedFailure(RuntimeError):
    """Raised by :data:`FAIL_AFTER_VARIABLE` (tests of killed and resumed runs)."""


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, and the backend of the process group it uses
    (``None``: one process, no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = field(default=False, repr=False)

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True when ``WORLD_SIZE`` is set (torchrun, ``srun`` with the variables exported, a manual launch)."""
    env = os.environ if env is None else env
    return bool(env.get("WORLD_SIZE"))


def context_from_environment(env: Mapping[str, str] | None = None) -> DistContext:
    """The rank, world size and local rank torchrun gave this process (one process if ``WORLD_SIZE`` is unset).

    :raises DistributedError: naming the variables that are missing or not integers in range.
    """
    env = os.environ if env is None else env
    if not launched_by_torchrun(env):
        return DistContext()
    missing = [name for name in TORCHRUN_VARIABLES if not env.get(name)]
    if missing:
        raise DistributedError(f"WORLD_SIZE={env['WORLD_SIZE']} is set (a distributed launch) but "
                               f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: launch with "
                               "torchrun (or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        try:
            values[name] = int(env[name])
        except ValueError:
            raise DistributedError(f"{name} must be an integer, got {env[name]!r}") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise DistributedError(f"need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got RANK={values['RANK']}, "
                               f"WORLD_SIZE={values['WORLD_SIZE']}, LOCAL_RANK={values['LOCAL_RANK']}")
    return DistContext(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def init_distributed(device_type: str | None = None, env: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group of a torchrun launch (gloo on CPU, nccl on GPU), or return the one-process context.

    A process group that is already initialised (the caller's own) is used as it is and left open.

    :param device_type: ``"cpu"`` forces gloo even where CUDA is available.
    :raises DistributedError: for a distributed launch without a usable ``torch.distributed``.
    """
    context = context_from_environment(env)
    if not launched_by_torchrun(env):
        return context
    import torch

    if not torch.distributed.is_available():
        raise DistributedError("WORLD_SIZE is set (a distributed launch) but this torch build has no "
                               "torch.distributed; install a torch with distributed support or launch one process "
                               "with plain python")
    dist = torch.distributed
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), context.local_rank, dist.get_backend())
    env = os.environ if env is None else env
    backend = env.get(BACKEND_VARIABLE) or ("nccl" if torch.cuda.is_available() and device_type != "cpu"
                                            else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(context.local_rank)
    elif backend == "gloo" and not dist.is_gloo_available():
        raise DistributedError("the gloo backend is not available in this torch build")
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return DistContext(dist.get_rank(), dist.get_world_size(), context.local_rank, backend, owns_group=True)


def shutdown(context: DistContext, wait_for_peers: bool = True) -> None:
    """Leave the process group :func:`init_distributed` opened (a caller's own group stays open).

    :param wait_for_peers: first wait (a barrier) until every rank is here, so that no rank tears its gloo
        connections down while a peer is still busy (rank 0 writing the reports): a rank that left early once
        aborted ("terminate called without an active exception") and torchrun then stopped the whole run.
        ``False`` after an error, when the other ranks may never come.
    """
    if context.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            if wait_for_peers:
                dist.barrier()
            dist.destroy_process_group()
        context.owns_group = False


@contextlib.contextmanager
def distributed_session(device_type: str | None = None, context: DistContext | None = None) -> Iterator[DistContext]:
    """:func:`init_distributed` for the length of a ``with`` block; a ``context`` given is used and left open.

    The group is left with :func:`shutdown`: on a normal end the ranks wait for each other first, after an
    exception they do not.
    """
    if context is not None:
        yield context
        return
    context = init_distributed(device_type)
    try:
        yield context
    except BaseException:
        shutdown(context, wait_for_peers=False)
        raise
    shutdown(context)


def broadcast_object(context: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (itself in one process)."""
    if not context.distributed:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(context: DistContext, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not context.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistContext) -> None:
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


# --- the shard plan ------------------------------------------------------------------------------------------


def class_rounds(y: np.ndarray) -> list[np.ndarray]:
    """Round ``k``: the positions of the ``k``-th image (in slice order) of every class that has one, ascending."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional class indices, got shape {y.shape}")
    within = np.zeros(len(y), dtype=np.int64)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        within[members] = np.arange(len(members))
    return [np.flatnonzero(within == k) for k in range(int(within.max(initial=-1)) + 1)]


def make_chunks(y: np.ndarray, images_per_class: int = 1) -> list[np.ndarray]:
    """The slice's fixed chunks: ``images_per_class`` consecutive rounds each (:func:`class_rounds`), positions
    ascending. They depend on the labels and ``images_per_class`` only, not on the number of processes."""
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, (int, np.integer)) \
            or images_per_class < 1:
        raise ValueError(f"images_per_class must be a positive integer, got {images_per_class!r}")
    rounds = class_rounds(y)
    return [np.sort(np.concatenate(rounds[start : start + images_per_class]))
            for start in range(0, len(rounds), images_per_class)]


def assigned_units(count: int, world_size: int, rank: int) -> list[int]:
    """The units (chunks, attack batches) rank ``rank`` computes: ``rank, rank + world_size, ...``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    return list(range(rank, count, world_size))


def shard_indices(y: np.ndarray, world_size: int, rank: int, images_per_class: int = 1) -> np.ndarray:
    """The positions of the slice that rank ``rank`` of ``world_size`` evaluates (its chunks), ascending."""
    chunks = make_chunks(y, images_per_class)
    mine = [chunks[c] for c in assigned_units(len(chunks), world_size, rank)]
    return np.sort(np.concatenate(mine)) if mine else np.zeros(0, dtype=np.int64)


def chunk_seed(seed: int, unit: int) -> int:
    """The seed of unit ``unit`` of a run seeded ``seed`` (numpy ``SeedSequence([seed, unit])``, 31 bits): the
    same whichever rank computes it, and unrelated to the seeds of the other units."""
    return int(np.random.SeedSequence([int(seed), int(unit)]).generate_state(1)[0] & 0x7FFFFFFF)


# --- the chunk store -----------------------------------------------------------------------------------------


def key_sha256(key: Mapping[str, Any]) -> str:
    """The sha256 of a store's key (canonical JSON)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=jsonable).encode()).hexdigest()


def normalise(payload: Any) -> Any:
    """``payload`` as it reads back from JSON, so a chunk computed now and one read from disk merge alike."""
    return json.loads(json.dumps(payload, default=jsonable))


class ChunkStore:
    """The finished units of one sharded computation: ``meta.json`` (its key) and one
    ``<prefix>-<unit>.json`` per finished unit (with ``.npz`` arrays beside it), each written atomically.

    :param key: everything the units' content depends on (config, seed, chunking, package version); its sha256
        is in every file, and a store or file of another key is refused.
    :param resume: read finished units back; without it an existing store is refused (``--resume`` to continue,
        ``--overwrite`` to discard).
    :raises ShardMismatchError: for a store of another key, or an existing store without ``resume``.
    """

    def __init__(self, directory: str | Path, key: Mapping[str, Any], *, resume: bool = False,
                 context: DistContext | None = None) -> None:
        self.directory = Path(directory)
        self.key = normalise(dict(key))
        self.sha256 = key_sha256(self.key)
        self.resume = resume
        problem = self._problem()
        # Every rank checks before any rank writes (no rank may take another's fresh meta.json for an old one),
        # and one rank's refusal stops them all.
        problems = [found for found in all_gather_objects(context or DistContext(), problem) if found]
        if problems:
            raise ShardMismatchError(problems[0])
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.directory / "meta.json", {"art_patch_defenses_version": __version__,
                                                         "key_sha256": self.sha256, "key": self.key})

    def _problem(self) -> str | None:
        meta = self.directory / "meta.json"
        if not meta.exists():
            return None
        try:
            found = json.loads(meta.read_text()).get("key_sha256")
        except (OSError, ValueError, AttributeError):
            found = None
        if found != self.sha256:
            return (f"{self.directory} holds the chunks of another run (config, seed, chunking, weights or version "
                    f"differ: key {str(found)[:12]} there, {self.sha256[:12]} now); pass --overwrite to discard them "
                    "or choose another --output-dir")
        if not self.resume:
            return (f"{self.directory} holds finished chunks of this run; pass --resume to continue it or "
                    "--overwrite to start again")
        return None

    def path(self, prefix: str, unit: int) -> Path:
        return self.directory / f"{prefix}-{unit:05d}.json"

    def load(self, prefix: str, unit: int) -> dict[str, Any] | None:
        """A finished unit (``payload``, with ``arrays`` if it has any), or None if it is not there (or
        unreadable: then it is computed again, with a warning)."""
        path = self.path(prefix, unit)
        if not self.resume or not path.exists():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            logger.warning("chunk file %s is unreadable (%s); computing it again", path, error)
            return None
        if stored.get("key_sha256") != self.sha256 or stored.get("unit") != unit:
            raise ShardMismatchError(f"{path} belongs to another run (key or unit differ); pass --overwrite to "
                                     "discard the stored chunks")
        payload = stored["payload"]
        if stored.get("arrays"):
            try:
                with np.load(path.with_suffix(".npz")) as arrays:
                    payload["arrays"] = {name: arrays[name] for name in arrays.files}
            except (OSError, ValueError) as error:
                logger.warning("arrays of chunk %s are unreadable (%s); computing it again", path, error)
                return None
        return payload

    def save(self, prefix: str, unit: int, payload: dict[str, Any]) -> dict[str, Any]:
        """Write a finished unit (arrays first, then the JSON that marks it finished); return it as it reads
        back (:func:`normalise`)."""
        arrays = dict(payload.get("arrays") or {})
        record = normalise({key: value for key, value in payload.items() if key != "arrays"})
        path = self.path(prefix, unit)
        if arrays:
            with atomic_path(path.with_suffix(".npz")) as temporary, open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
        write_json_atomic(path, {"key_sha256": self.sha256, "unit": unit, "arrays": sorted(arrays),
                                 "payload": record})
        return {**record, **({"arrays": arrays} if arrays else {})}


def _fail_after() -> tuple[int | None, int] | None:
    text = os.environ.get(FAIL_AFTER_VARIABLE)
    if not text:
        return None
    rank, _, count = text.rpartition(":")
    return (int(rank) if rank else None), int(count)


@dataclass
class UnitStats:
    """What one rank did with its units: computed now, or read back from the store."""

    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)


def sharded_map(context: DistContext, store: ChunkStore, prefix: str, count: int,
                compute: Callable[[int], dict[str, Any]], *, before_compute: Callable[[], None] | None = None,
                ) -> tuple[list[dict[str, Any]], list[UnitStats]]:
    """Compute units ``0 .. count-1`` across the ranks (unit ``u`` on rank ``u mod world_size``), each written to
    ``store`` as soon as it is done, finished ones read back; every unit's payload, in unit order, on every rank.

    :param before_compute: called once before the first unit this rank must compute (e.g. training a universal
        patch), skipped when every unit of this rank is already in the store.
    :return: the payloads in unit order, and each rank's :class:`UnitStats`.
    """
    mine = assigned_units(count, context.world_size, context.rank)
    found = {unit: store.load(prefix, unit) for unit in mine}
    stats = UnitStats(reused=[unit for unit, payload in found.items() if payload is not None])
    todo = [unit for unit, payload in found.items() if payload is None]
    if stats.reused:
        logger.info("rank %d: %d of its %d %s units read back from %s", context.rank, len(stats.reused), len(mine),
                    prefix, store.directory)
    fail = _fail_after()
    if todo and before_compute is not None:
        before_compute()
    for unit in todo:
        found[unit] = store.save(prefix, unit, compute(unit))
        stats.computed.append(unit)
        if fail is not None and fail[0] in (None, context.rank) and len(stats.computed) >= fail[1]:
            raise InjectedFailure(f"{FAIL_AFTER_VARIABLE}: rank {context.rank} stops after {fail[1]} unit(s)")
    gathered = all_gather_objects(context, ({unit: found[unit] for unit in mine}, stats))
    payloads: dict[int, dict[str, Any]] = {}
    for part, _ in gathered:
        payloads.update(part)
    return [payloads[unit] for unit in range(count)], [rank_stats for _, rank_stats in gathered]


def merge_counts(parts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Sum integer counts key by key."""
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + int(value)
    return total
