"""What a scenario run produces, shared by the runner and the reports, and how it reaches the disk.

Nothing finished is lost: every file is written atomically (:func:`atomic_path`: a temporary file in the same
directory, flushed, then ``os.replace``d over the target, so a reader sees the old file or the new one, never half
of one), each scenario's record is written as soon as it finishes, and :class:`RunManifest` keeps
``manifest.json`` up to date with what has finished and how the run stands.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from art_patch_defenses import __version__

#: The files and directory an evaluation run writes into its output directory.
MANIFEST = "manifest.json"
SCENARIO_DIR = "scenarios"
#: Where a sharded run keeps its finished chunks (:mod:`art_patch_defenses.evaluation.distributed`).
SHARD_DIR = "shards"
RUN_ARTEFACTS = (MANIFEST, "config.json", "results.json", "report.md", "report.png", SCENARIO_DIR, SHARD_DIR)
#: Run states in ``manifest.json``: ``running`` while it runs (and if the process was killed), then one of the others.
RUN_STATUSES = ("running", "complete", "interrupted", "failed")


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


def jsonable(value: Any) -> Any:
    """``json.dumps`` ``default=`` for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; restored at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write to; on success it replaces ``path`` atomically, on an
    exception (Ctrl-C included) it is removed and ``path`` is left as it was.

    The temporary file is in the same directory (``os.replace`` is atomic only within one file system), flushed to
    disk before the rename, and gets the permissions a plain ``open`` would give (``mkstemp`` makes it 0600).
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (:func:`atomic_path`); return ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """``payload`` as indented JSON (numpy values converted), written atomically; return ``path``."""
    return write_atomic(path, json.dumps(payload, indent=2, default=jsonable) + "\n")


class OutputDirError(ValueError):
    """The output directory cannot take this run's results (checked before any evaluation)."""


def previous_run_files(output_dir: Path) -> list[str]:
    """The artefacts of an earlier run found in ``output_dir`` (names from :data:`RUN_ARTEFACTS`)."""
    return [name for name in RUN_ARTEFACTS if (output_dir / name).exists()]


def check_output_dir(path: str | Path) -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written in it.

    :raises OutputDirError: if it is, or is under, something that is not a directory, cannot be created, or is not
        writable (``os.access``, then a real probe file, which also catches a read-only file system under root).
    """
    output_dir = Path(path).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"output directory {output_dir} exists and is not a directory")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputDirError(f"cannot create output directory {output_dir}: {error.strerror or error}") from error
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {output_dir} is not writable")
    try:
        with tempfile.TemporaryFile(dir=output_dir, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise OutputDirError(f"output directory {output_dir} is not writable: {error.strerror or error}") from error
    return output_dir


def suite_text(suite: dict) -> str:
    """The validated suite as ``config.json`` holds it."""
    return json.dumps(suite, indent=2, default=jsonable) + "\n"


def prepare_output_dir(path: str | Path, *, overwrite: bool = False, resume: dict | None = None) -> Path:
    """:func:`check_output_dir`, and refuse to mix runs: a directory holding an earlier run's artefacts
    (:data:`RUN_ARTEFACTS`) is refused unless ``overwrite``, which removes those artefacts (and nothing else)
    before the new run starts, or ``resume``.

    :param resume: the suite of a run to continue: an earlier run of the same suite (its ``config.json``) keeps
        its finished chunks (:data:`SHARD_DIR`) and only its reports are removed; an empty directory is fine.
    :raises OutputDirError: as :func:`check_output_dir`, or for an earlier run's results without ``overwrite``,
        or of another config with ``resume``.
    """
    output_dir = check_output_dir(path)
    found = previous_run_files(output_dir)
    if found and resume is not None and not overwrite:
        config = output_dir / "config.json"
        if config.exists() and config.read_text() != suite_text(resume):
            raise OutputDirError(
                f"output directory {output_dir} holds a run of another config (its config.json differs: config, "
                "--n, --max-iter or --seed); --resume continues the same run only: choose another --output-dir, "
                "or pass --overwrite to replace it"
            )
        found = [name for name in found if name != SHARD_DIR]
    elif found and not overwrite:
        hint = " or --resume to continue a sharded run" if SHARD_DIR in found else ""
        raise OutputDirError(
            f"output directory {output_dir} holds another run's results ({', '.join(found)}); choose another "
            f"--output-dir, or pass --overwrite (overwrite=True) to replace them{hint}"
        )
    for name in found:
        _remove_artefact(output_dir / name)
    return output_dir


def _remove_artefact(path: Path) -> None:
    if path.name == SHARD_DIR and path.is_dir():  # chunk stores: only the files a sharded run writes
        for store in path.iterdir():
            if store.is_dir() and (store / "meta.json").exists():
                for member in store.iterdir():
                    if member.is_file() and member.suffix in (".json", ".npz", ".tmp"):
                        member.unlink()
                with contextlib.suppress(OSError):
                    store.rmdir()
        with contextlib.suppress(OSError):
            path.rmdir()
        return
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return
    for member in path.iterdir():  # only what a run writes there; anything else stays, and so does the directory
        if member.is_file() and (member.suffix == ".json" or member.name.endswith(".tmp")):
            member.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "scenario"


class RunManifest:
    """``manifest.json`` of an evaluation run, rewritten atomically whenever the run moves on.

    It holds the config's source, the scenario list (label, file, status), which have finished, the run's status
    (``running``, ``complete``, ``interrupted``, ``failed``; a ``running`` manifest whose process is gone belongs
    to a run that was killed), the error if any, and timestamps. The validated suite is written beside it as
    ``config.json`` and each finished scenario's record as ``scenarios/<index>-<label>.json``.
    """

    def __init__(self, output_dir: str | Path, suite: dict, source: str) -> None:
        self.output_dir = Path(output_dir)
        scenarios = suite["scenarios"]
        width = max(2, len(str(len(scenarios) - 1)))
        config_text = suite_text(suite)
        self.data: dict[str, Any] = {
            "art_patch_defenses_version": __version__,
            "status": "running",
            "_description": suite["_description"],
            "config_source": source,
            "config_file": "config.json",
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
            "started": _now(),
            "updated": _now(),
            "finished": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "scenarios_total": len(scenarios),
            "scenarios_complete": 0,
            "scenarios": [
                {"index": i, "label": " / ".join(scenario_label(config)),
                 "file": f"{SCENARIO_DIR}/{i:0{width}d}-{_slug('-'.join(scenario_label(config)))}.json",
                 "status": "pending"}
                for i, config in enumerate(scenarios)
            ],
            "error": None,
            "files": {},
        }
        (self.output_dir / SCENARIO_DIR).mkdir(exist_ok=True)
        write_atomic(self.output_dir / "config.json", config_text)
        self.write()

    @property
    def path(self) -> Path:
        return self.output_dir / MANIFEST

    @property
    def complete(self) -> int:
        return self.data["scenarios_complete"]

    def write(self) -> None:
        self.data["updated"] = _now()
        write_json_atomic(self.path, self.data)

    def start_scenario(self, index: int) -> None:
        self.data["scenarios"][index]["status"] = "running"
        self.data["scenarios"][index]["started"] = _now()
        self.write()

    def scenario_done(self, index: int, record: dict[str, Any]) -> Path:
        """Write the scenario's record to its own file, then mark it complete in the manifest; return the file."""
        entry = self.data["scenarios"][index]
        path = write_json_atomic(self.output_dir / entry["file"], record)
        entry.update(status="complete", finished=_now())
        self.data["scenarios_complete"] += 1
        self.write()
        return path

    def note_chunks(self, index: int, stats: list[Any]) -> None:
        """Record how a sharded scenario's chunks were obtained, per rank: computed now or read back."""
        self.data["scenarios"][index]["chunks"] = {
            "computed": sum(len(rank.computed) for rank in stats),
            "reused": sum(len(rank.reused) for rank in stats),
            "per_rank": [{"computed": list(rank.computed), "reused": list(rank.reused)} for rank in stats],
        }
        self.write()

    def close(self, status: str, files: dict[str, str] | None = None, error: BaseException | None = None) -> None:
        """Record how the run ended (one of :data:`RUN_STATUSES` but ``running``) and the report files."""
        if status not in RUN_STATUSES[1:]:
            raise ValueError(f"status must be one of {RUN_STATUSES[1:]}, got {status!r}")
        for entry in self.data["scenarios"]:
            if entry["status"] == "running":
                entry["status"] = status  # the scenario the run stopped in
        self.data.update(status=status, finished=_now(), files=dict(files or {}))
        if error is not None:
            self.data["error"] = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.write()


def read_manifest(output_dir: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of an output directory."""
    return json.loads((Path(output_dir) / MANIFEST).read_text())
