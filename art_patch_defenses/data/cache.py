"""A cache of decoded data sets as ``.npz`` files that is safe against crashes, races and stale sources.

- An entry's file name carries a hash of the source's *content* (for an ImageFolder: every image's relative path,
  size and mtime; for the embedded digits: the supplying package's version and data file), so a changed source
  misses the cache and the superseded entry of the same source is deleted once the new one is written.
- Entries are written to a temporary file in the cache directory, fsynced and moved into place with
  :func:`os.replace`: a reader sees either no entry or a complete one, never a half-written file, and a writer
  killed mid-write leaves only a temporary file that no reader opens (and that a later writer removes).
- Every entry stores the sha256 of its arrays, checked on load. A corrupt or partial entry is reported with a
  :class:`CacheWarning` and rebuilt.
- When the cache directory cannot be written, that is found out before the data are decoded, and the load runs
  uncached with a :class:`CacheWarning`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from art_patch_defenses.paths import cache_dir

logger = logging.getLogger(__name__)

#: Part of every key: bump it when what an entry stores changes, so that older entries miss.
CACHE_FORMAT = 2
#: Names of the bookkeeping arrays stored next to the data.
CHECKSUM_ENTRY = "__sha256__"
KEY_ENTRY = "__key__"
#: A temporary file older than this is an orphan even if its writer's process id is in use again.
ORPHAN_AGE_SECONDS = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
#: ``.<entry>.tmp-<host>-<pid>-<random>.part``: the writer's host and pid tell whether it is still alive.
_TEMP_PATTERN = re.compile(r"^\.(?P<entry>.+\.npz)\.tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[^-]*\.part$")


class CacheWarning(UserWarning):
    """A cache entry was corrupt and is rebuilt, or the cache cannot be written and a load runs uncached."""


def _warn(message: str) -> None:
    # A warning, not a log record: shown once per message even where logging is not set up
    # (``logging.captureWarnings`` routes it into a run's log).
    warnings.warn(message, CacheWarning, stacklevel=3)


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """The sha256 of named arrays: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return digest.hexdigest()


def key_digest(source: str, content: Any) -> str:
    """The sha256 that names an entry: the cache format, the source and a JSON description of its content."""
    text = json.dumps({"format": CACHE_FORMAT, "source": source, "content": content}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_path(directory: Path, tag: str, source: str, digest: str) -> Path:
    """``<tag>-<hash of source>-<hash of key>.npz``: entries of one source share the prefix."""
    return directory / f"{_family(tag, source)}-{digest[:16]}.npz"


def _family(tag: str, source: str) -> str:
    return f"{tag}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"


def cached_arrays(tag: str, source: str, content: Any,
                  build: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns, read from the cache when an intact entry of the same content exists.

    :param tag: readable start of the file name, e.g. ``"imagefolder-test"``.
    :param source: what the entry is made from (a resolved path, a data set name); a new entry of a source
        replaces the source's earlier ones.
    :param content: JSON-serialisable description of the source's content; any change makes a new entry.
    :param build: makes the arrays (plain dtypes, no objects) when the cache cannot serve them.
    """
    digest = key_digest(source, content)
    try:
        directory = cache_dir()
    except OSError as error:  # e.g. the cache path lies under a file, or its parent is read-only
        _warn(f"cache directory unusable ({error}); loading {tag} without the cache")
        return dict(build())
    path = entry_path(directory, tag, source, digest)
    stored = _read_entry(path, digest)
    if stored is not None:
        return stored
    pending = _reserve(path)  # before the work: an unwritable cache is found out now, not after decoding
    try:
        arrays = dict(build())
    except BaseException:
        if pending is not None:
            pending.discard()
        raise
    if pending is not None and _commit(pending, path, arrays, digest):
        _drop_superseded(path, _family(tag, source))
    return arrays


def _read_entry(path: Path, digest: str) -> dict[str, np.ndarray] | None:
    """The entry's arrays if it exists and is intact; a damaged entry is reported and treated as missing."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        return None
    except Exception as error:  # whatever a damaged file raises (zip, npy, OS errors), it cannot be served
        _warn(f"cache entry {path} is corrupt or unreadable ({type(error).__name__}: {error}); rebuilding it")
        return None
    checksum = arrays.pop(CHECKSUM_ENTRY, None)
    if checksum is None or str(checksum) != arrays_sha256(arrays):
        _warn(f"cache entry {path} is corrupt (its arrays do not match their stored sha256); rebuilding it")
        return None
    if str(arrays.pop(KEY_ENTRY, "")) != digest:  # a file name collision or a file copied in by hand
        _warn(f"cache entry {path} was made from other data than its name says; rebuilding it")
        return None
    return arrays


class _Pending:
    """An open temporary file next to the entry it will become."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def discard(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _reserve(path: Path) -> _Pending | None:
    """Open the temporary file of a new entry; None (with a warning) when the cache directory is not writable."""
    directory = path.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        _warn(f"cache directory {directory} is not writable; loading without the cache (nothing is saved)")
        return None
    _remove_orphans(path)
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}-",
                                    suffix=".part")
    except OSError as error:  # read-only file system, quota, or a permission os.access did not see
        _warn(f"cache directory {directory} is not writable ({error}); loading without the cache (nothing is saved)")
        return None
    return _Pending(fd, Path(name))


def _save_npz(handle: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` to ``handle`` (a function of its own so tests can interrupt it)."""
    np.savez(handle, **arrays)


def _commit(pending: _Pending, path: Path, arrays: dict[str, np.ndarray], digest: str) -> bool:
    """Write the entry to its temporary file, fsync it and move it into place; a failure only warns.

    :return: whether the entry is in place.
    """
    for name, array in arrays.items():
        if array.dtype.hasobject:
            pending.discard()
            raise TypeError(f"cache arrays must have plain dtypes; {name!r} holds Python objects")
    stored = {**arrays, KEY_ENTRY: np.asarray(digest)}
    stored[CHECKSUM_ENTRY] = np.asarray(arrays_sha256(stored))
    try:
        with os.fdopen(pending.fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp makes it owner-only; a shared cache is read by others
            _save_npz(handle, stored)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(pending.path, path)  # atomic: readers see the old state or the whole new entry
        _fsync_directory(path.parent)
        logger.info("cached %s", path)
    except OSError as error:
        _warn(f"could not write cache entry {path} ({error}); the data were loaded but not cached")
        pending.path.unlink(missing_ok=True)
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (a crash right after it could otherwise lose the entry)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _drop_superseded(path: Path, family: str) -> None:
    """Delete the same source's entries made from earlier content: no reader will ask for them again."""
    for other in path.parent.glob(f"{family}-*.npz"):
        if other != path:
            try:
                other.unlink()
                logger.info("removed superseded cache entry %s", other)
            except OSError:
                pass  # removed by another process meanwhile, or not ours to remove


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of this entry left by writers that died (killed mid-write)."""
    for candidate in path.parent.glob(f".{path.name}.tmp-*.part"):
        match = _TEMP_PATTERN.match(candidate.name)
        if match is None:
            continue
        try:
            age = time.time() - candidate.stat().st_mtime
        except OSError:
            continue
        dead = match["host"] == _HOST and not _process_alive(int(match["pid"]))
        if dead or age > ORPHAN_AGE_SECONDS:
            candidate.unlink(missing_ok=True)
            logger.info("removed the temporary file %s of a writer that did not finish", candidate)
