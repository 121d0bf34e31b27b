"""Safe checkpoint loading and saving: ``weights_only=True``, sha256 verification, exact key matching, atomic
writes, and the checks a training command makes before it touches a log or a checkpoint.

A checkpoint that cannot be used raises a :class:`CheckpointError` (a ``ValueError``) that names the file and
says what is wrong with it: empty, truncated or corrupt, not a plain state dict (refused), another sha256, or
keys and shapes that do not match the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import tempfile
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
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
#: torch's weights-only unpickler names the class it refused like this.
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def sha256_of(path: str | Path) -> str:
    """The hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def modules_sha256(modules: list[nn.Module]) -> str:
    """The hex sha256 of the parameters and buffers of ``modules`` (names, dtypes, shapes and bytes, in order):
    a fingerprint of the weights a model predicts with, whatever file they came from."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(estimator) -> str | None:
    """A fingerprint of the weights ``estimator`` predicts with: the sha256 of the torch modules it holds and those
    its pre- and postprocessing defences hold (e.g. PatchZero's detector); None when it holds none. It goes into the
    key of a sharded ``evaluate`` or ``verify`` run, so a resumed run refuses chunks computed with other weights, and
    into every ``evaluate`` result."""
    holders = [estimator, *(estimator.preprocessing_defences or []), *(estimator.postprocessing_defences or [])]
    modules, seen = [], set()
    for holder in holders:
        for _, value in sorted(vars(holder).items()):
            if isinstance(value, nn.Module) and id(value) not in seen:
                seen.add(id(value))
                modules.append(value)
    return modules_sha256(modules) if modules else None


def normalise_sha256(sha256: str) -> str:
    """A sha256 given by a user, lower-cased and stripped; anything but 64 hex digits is a ``ValueError``."""
    text = str(sha256).strip().lower()
    if not _SHA256_PATTERN.match(text):
        raise ValueError(f"a sha256 is 64 hex digits, got {sha256!r}")
    return text


def _read_record(record: Path) -> dict:
    try:
        content = json.loads(record.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"the checkpoint record {record} cannot be read ({error}); restore it from git"
                              ) from error
    if not isinstance(content, dict):
        raise CheckpointError(f"the checkpoint record {record} is not a JSON object; restore it from git")
    return content


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 that ``checkpoints.json`` records for a file in the project's ``checkpoints/``, if any."""
    from art_patch_defenses.paths import checkpoints_dir

    path = Path(path)
    record = checkpoints_dir() / "checkpoints.json"
    if path.resolve().parent != checkpoints_dir().resolve() or not record.is_file():
        return None
    return _read_record(record).get(path.name, {}).get("sha256")


def verify_sha256(path: str | Path, sha256: str | None = None) -> None:
    """Check ``path`` against every digest that applies: ``sha256`` (given by the caller), :data:`KNOWN_SHA256`
    for known file names and the ``checkpoints/checkpoints.json`` record for this project's checkpoints.

    :raises CheckpointError: naming the file, the expected and the actual digest and where the expected one is from.
    """
    path = Path(path)
    expected = [(normalise_sha256(sha256), "given") if sha256 is not None else None,
                (KNOWN_SHA256[path.name], "known for this file name") if path.name in KNOWN_SHA256 else None]
    recorded = recorded_sha256(path)
    if recorded is not None:
        expected.append((recorded, "recorded in checkpoints.json"))
    expected = [item for item in expected if item is not None]
    if not expected:
        return
    actual = sha256_of(path)
    for digest, source in expected:
        if actual != digest:
            raise CheckpointError(f"checkpoint {path}: sha256 mismatch, expected {digest} ({source}), actual {actual}; "
                                  "refusing to load it")


def _check_file(path: Path) -> int:
    """The size of a checkpoint file that exists, is a file and is not empty."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted save or copy; re-create it")
    return size


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file and the problem.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises CheckpointError: if the file is empty, truncated or corrupt, or holds Python objects other than
        tensors and plain containers (refused: unpickling them could run code).
    """
    path = Path(path)
    size = _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _REFUSED_GLOBAL.search(str(error))
        if refused is not None:  # torch's own text would suggest weights_only=False: never do that here
            raise CheckpointError(
                f"checkpoint {path} is not a plain state dict (tensors only) and was refused: it holds a Python "
                f"object ({refused[1]}), which is not unpickled because that could run arbitrary code; save "
                "model.state_dict() instead"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint ({size} bytes): "
                              "its pickle data cannot be read") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, OSError, KeyError... for damaged files
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({size} bytes; torch could not read it: "
                              f"{type(error).__name__}); re-create or re-download it") from error


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path``, checking its sha256 first.

    Accepts a bare state dict or a dict with a ``state_dict`` entry (the layout of the pretrained CIFAR
    ResNets and of this project's checkpoints). The ``module.`` prefix of ``DataParallel`` saves is removed.

    :param path: checkpoint file.
    :param sha256: expected digest (for weights given by path); the digest of a known file name and the record
        in ``checkpoints/checkpoints.json`` for this project's checkpoints are checked as well.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises CheckpointError: (a ``ValueError``) if the digest does not match, the file cannot be read (see
        :func:`read_checkpoint`) or it holds no state dict.
    """
    path = Path(path)
    _check_file(path)  # an empty file is reported as such, not as a sha256 mismatch
    verify_sha256(path, sha256)
    content = read_checkpoint(path)
    state = content.get("state_dict", content) if isinstance(content, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors (found {type(content).__name__})")
    not_tensors = sorted(str(key) for key, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors: {_listed(not_tensors)} "
                              "are not tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _listed(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> nn.Module:
    """Load ``path`` into ``model`` key for key.

    :raises CheckpointError: (a ``ValueError``) for a missing, unexpected or mis-shaped key, listing them and
        naming the file, and for the reasons of :func:`read_state_dict`.
    """
    state = read_state_dict(path, sha256)
    own = model.state_dict()
    # Old BatchNorm saves lack the ``num_batches_tracked`` counter; it is bookkeeping, not a weight.
    for key in set(own) - set(state):
        if key.endswith("num_batches_tracked"):
            state[key] = own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                   for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        problems = [f"{len(items)} {what}: {_listed(items)}" for what, items in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape))
                    if items]
        raise CheckpointError(f"checkpoint {path} does not match {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state)
    return model


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """``write(handle)`` into a temporary file next to ``path``, fsync it, then move it over ``path``: a run killed
    mid-write leaves the earlier file intact instead of a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes it owner-only; keep the replaced file's mode (committed files are world-readable)
            os.fchmod(handle.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def save_checkpoint(model: nn.Module, path: str | Path, **metadata: Any) -> str:
    """Save ``{"state_dict": ..., **metadata}`` (plain types only, loadable with ``weights_only=True``), atomically.

    :return: the sha256 of the written file.
    """
    path = Path(path)
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    _atomic_write(path, lambda handle: torch.save({"state_dict": state, **metadata}, handle))
    return sha256_of(path)


def file_logger(path: str | Path) -> Callable[[str], None]:
    """A ``log(line)`` for training runs: prints the line and rewrites ``path`` with every line so far (atomically,
    so a run killed while logging keeps the lines logged before)."""
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        text = ("\n".join(lines) + "\n").encode()
        _atomic_write(Path(path), lambda handle: handle.write(text))

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


def check_output_writable(out: str | Path) -> None:
    """Refuse, before a training run does any work, a checkpoint path it could not write with its log and record.

    ``out``, ``out.with_suffix(".log")`` and ``checkpoints.json`` beside it must be writable files (or not exist
    yet) and the nearest existing folder of ``out`` must take new files (probed with an anonymous file, so
    nothing is left behind).

    :raises IsADirectoryError, NotADirectoryError, PermissionError: naming the path.
    """
    out = Path(out)
    for path in (out, out.with_suffix(".log"), out.parent / "checkpoints.json"):
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory; give the checkpoint's file path")
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot create {out.parent}: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {folder}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:  # a read-only file system, or a permission os.access does not see
        raise PermissionError(f"cannot write into {folder} ({error})") from error


def check_run_start(parser: argparse.ArgumentParser, out: str | Path,
                    **checks: Callable[[], object]) -> None:
    """What a training command checks before it opens (and possibly rotates) a log: that ``out`` is writable
    (:func:`check_output_writable`) and every named check, e.g. ``init=lambda: build_model(name, args.init)``,
    passes. A failure ends the command through ``parser.error`` (exit status 2) with the option and the reason.
    """
    try:
        check_output_writable(out)
    except OSError as error:
        parser.error(f"--out {out}: {error}")
    for option, check in checks.items():
        try:
            check()
        except (OSError, ValueError) as error:
            parser.error(f"--{option.replace('_', '-')}: {error}")


def _checked_number(convert: Callable[[str], Any], accept: Callable[[Any], bool], what: str
                    ) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


#: ``type=`` functions for training commands' numeric options: a value out of range is an argparse error.
positive_int = _checked_number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked_number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _checked_number(float, lambda v: v > 0 and v != float("inf"), "a positive number")
non_negative_float = _checked_number(float, lambda v: 0 <= v < float("inf"), "a non-negative number")
probability = _checked_number(float, lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")
fraction = _checked_number(float, lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]")


def open_run_log(out: Path, command: str, init: Path | None = None) -> tuple[Callable[[str], None], str | None]:
    """Start the log of a training run that writes ``out``: keep an earlier log when the run continues ``init``
    (see :func:`keep_previous_log`), log the command and the starting checkpoint's sha256.

    ``out`` must be writable and ``init`` a readable checkpoint; both are checked before the earlier log is
    renamed (commands check them, and their other arguments, before calling this: see :func:`check_run_start`).

    :return: the logger and the earlier log's new name (for :func:`record_checkpoint`), None for a fresh run.
    """
    check_output_writable(out)
    if init is not None:
        read_checkpoint(init)
    previous_log = keep_previous_log(out.with_suffix(".log")) if init is not None else None
    log = file_logger(out.with_suffix(".log"))
    log(f"command: {command}")
    if init is not None:
        log(f"continues from {init.name} (sha256 {sha256_of(init)})")
    return log, previous_log


def finish_training_run(
    model: nn.Module, out: Path, command: str, log: Callable[[str], None], previous_log: str | None, *, arch: str,
    init: str, settings: dict, epochs: int, lr: float, train_images: int, seconds: float,
) -> dict:
    """The end of a base-model training command: save ``model`` to ``out`` (with ``arch`` and ``settings``), log the
    run's summary and add it to the ``checkpoints.json`` beside ``out`` (:func:`record_checkpoint`).

    :return: the summary (checkpoint name, sha256, model, init, settings, epochs, lr, images, seconds, size).
    """
    sha = save_checkpoint(model, out, arch=arch, **settings)
    summary = {"checkpoint": out.name, "sha256": sha, "model": arch, "init": init, **settings, "epochs": epochs,
               "lr": lr, "train_images": train_images, "seconds": round(seconds), "size_bytes": out.stat().st_size}
    log(json.dumps(summary))
    record_checkpoint(out.parent / "checkpoints.json", out.name, summary, command, previous_log)
    return summary


def record_checkpoint(
    record_path: Path, name: str, summary: dict, command: str, previous_log: str | None = None
) -> None:
    """Add (or replace) a checkpoint's entry in the ``checkpoints.json`` record: sha256, command, figures.

    When the run continued from the file's previous version, that version's entry moves under ``history``
    (with its log renamed to ``previous_log``).
    """
    record = _read_record(record_path) if record_path.is_file() else {}
    entry = {**summary, "command": command, "log": Path(name).with_suffix(".log").name}
    previous = record.get(name)
    if previous is not None and summary.get("init") not in (None, "pretrained"):
        if previous_log:
            previous["log"] = previous_log
        entry["history"] = [*previous.pop("history", []), previous]
    record[name] = entry
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _atomic_write(record_path, lambda handle: handle.write(text.encode()))
