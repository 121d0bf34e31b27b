"""Safe checkpoint loading and saving: ``weights_only=True``, sha256 verification, exact key matching."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: sha256 of the weight files the project knows, by file name. A known file whose hash differs is refused.
KNOWN_SHA256 = {
    "resnet20-12fca82f.th": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    "resnet56-4bfd9763.th": "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
}


def sha256_of(path: str | Path) -> str:
    """The hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 that ``checkpoints.json`` records for a file in the project's ``checkpoints/``, if any."""
    from art_patch_defenses.paths import checkpoints_dir

    path = Path(path)
    record = checkpoints_dir() / "checkpoints.json"
    if path.resolve().parent != checkpoints_dir().resolve() or not record.is_file():
        return None
    return json.loads(record.read_text()).get(path.name, {}).get("sha256")


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``, checking its sha256 first.

    Accepts a bare state dict or a dict with a ``state_dict`` entry (the layout of the pretrained CIFAR
    ResNets and of this project's checkpoints). The ``module.`` prefix of ``DataParallel`` saves is removed.

    :param path: checkpoint file.
    :param sha256: expected digest; defaults to :data:`KNOWN_SHA256` for known file names and to the record in
        ``checkpoints/checkpoints.json`` for this project's checkpoints, else unchecked.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: if the digest does not match or the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    expected = sha256 or KNOWN_SHA256.get(path.name) or recorded_sha256(path)
    if expected is not None:
        actual = sha256_of(path)
        if actual != expected:
            raise ValueError(f"checkpoint {path} has sha256 {actual}, expected {expected}: refusing to load it")
    content = torch.load(path, map_location="cpu", weights_only=True)
    state = content.get("state_dict", content) if isinstance(content, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} holds no state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> nn.Module:
    """Load ``path`` into ``model`` key for key; a missing, unexpected or mis-shaped key is a ``ValueError``."""
    state = read_state_dict(path, sha256)
    own = model.state_dict()
    # Old BatchNorm saves lack the ``num_batches_tracked`` counter; it is bookkeeping, not a weight.
    for key in set(own) - set(state):
        if key.endswith("num_batches_tracked"):
            state[key] = own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"checkpoint {path} does not match {type(model).__name__}: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"wrong shapes {wrong_shape[:5]}"
        )
    model.load_state_dict(state)
    return model


def save_checkpoint(model: nn.Module, path: str | Path, **metadata: Any) -> str:
    """Save ``{"state_dict": ..., **metadata}`` (plain types only, loadable with ``weights_only=True``).

    :return: the sha256 of the written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, **metadata}, path)
    return sha256_of(path)


def file_logger(path: str | Path) -> Callable[[str], None]:
    """A ``log(line)`` for training runs: prints the line and rewrites ``path`` with every line so far."""
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        Path(path).write_text("\n".join(lines) + "\n")

    return log


def keep_previous_log(log_path: Path) -> str | None:
    """Before a run that continues a checkpoint rewrites its log: rename the earlier log to
    ``<name>.part<k>.log`` (first free k) and return that name for :func:`record_checkpoint`."""
    if not log_path.is_file():
        return None
    part = 1
    while log_path.with_suffix(f".part{part}.log").is_file():
        part += 1
    previous = log_path.with_suffix(f".part{part}.log")
    log_path.rename(previous)
    return previous.name


def open_run_log(out: Path, command: str, init: Path | None = None) -> tuple[Callable[[str], None], str | None]:
    """Start the log of a training run that writes ``out``: keep an earlier log when the run continues ``init``
    (see :func:`keep_previous_log`), log the command and the starting checkpoint's sha256.

    :return: the logger and the earlier log's new name (for :func:`record_checkpoint`), None for a fresh run.
    """
    previous_log = keep_previous_log(out.with_suffix(".log")) if init is not None else None
    log = file_logger(out.with_suffix(".log"))
    log(f"command: {command}")
    if init is not None:
        log(f"continues from {init.name} (sha256 {sha256_of(init)})")
    return log, previous_log


def record_checkpoint(
    record_path: Path, name: str, summary: dict, command: str, previous_log: str | None = None
) -> None:
    """Add (or replace) a checkpoint's entry in the ``checkpoints.json`` record: sha256, command, figures.

    When the run continued from the file's previous version, that version's entry moves under ``history``
    (with its log renamed to ``previous_log``).
    """
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    entry = {**summary, "command": command, "log": Path(name).with_suffix(".log").name}
    previous = record.get(name)
    if previous is not None and summary.get("init") not in (None, "pretrained"):
        if previous_log:
            previous["log"] = previous_log
        entry["history"] = [*previous.pop("history", []), previous]
    record[name] = entry
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
