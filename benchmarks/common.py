"""What every benchmark shares: the result schema, the environment record, and writing + printing.

Schema (every ``benchmarks/results/*.json``): ``benchmark``, ``command``, ``config``, ``results``, ``intervals``
(each accuracy's count and 95% Clopper-Pearson interval), ``environment``, ``timestamp``. ``config`` holds
everything needed to reproduce the numbers (weights and their sha256, data slice, attacks and budgets, patch sizes
and placement).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
EVALUATE_OPTIONS = ["--sharded", "--resume", "--quiet"]
#: The robust-masking benchmarks' ``--backbone`` names -> registered models (checkpoints/checkpoints.json).
ROBUST_MASKING_BACKBONES = {"ds": "cifar_mask_ds", "ds_crop": "cifar_mask_ds_crop", "ds_crop56": "cifar_mask_ds_crop56",
                            "bagnet": "cifar_bagnet"}


def accuracy(classifier, x: np.ndarray, y: np.ndarray, batch_size: int = 250) -> float:
    """Top-1 accuracy of an ART classifier."""
    return float(np.mean(classifier.predict(x, batch_size=batch_size).argmax(1) == y))


def median_predict_seconds(classifier, x: np.ndarray, repeats: int = 7) -> float:
    """Median wall time of ``classifier.predict(x)`` in one batch, after a warm-up run."""
    classifier.predict(x, batch_size=len(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.predict(x, batch_size=len(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def environment() -> dict:
    import art
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "art": art.__version__,
        "numpy": numpy.__version__,
    }


def accuracy_intervals(results: dict, images: dict[str, int]) -> dict[str, dict]:
    """For each accuracy ``results[key]`` measured on ``images[key]`` images: its count and its 95% Clopper-Pearson
    interval (:func:`art_patch_defenses.evaluation.metrics.accuracy_interval`). A key that is missing, not a
    fraction of its images, or given no images is a ``ValueError``: an interval is never guessed."""
    from art_patch_defenses.evaluation.metrics import accuracy_interval

    intervals = {}
    for key, n in images.items():
        value = results.get(key)
        if not isinstance(value, float | int) or n < 1:
            raise ValueError(f"no accuracy {key!r} of {n} images in the results")
        correct = round(value * n)
        if abs(correct - value * n) > 1e-6 * n:
            raise ValueError(f"{key} = {value} is not a fraction of {n} images")
        intervals[key] = {"correct": correct, "images": n, "interval_95": accuracy_interval(correct, n)}
    return intervals


def write_result(benchmark: str, config: dict, results: dict, images: dict[str, int] | None = None) -> Path:
    """Write ``benchmarks/results/<benchmark>.json`` and print its results as a table.

    :param images: the number of images behind each accuracy in ``results`` (by key); the JSON gets their counts
        and 95% Clopper-Pearson intervals under ``intervals`` (:func:`accuracy_intervals`).
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": benchmark,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "config": config,
        "results": results,
        "intervals": accuracy_intervals(results, images or {}),
        "environment": environment(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = RESULTS_DIR / f"{benchmark}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    width = max(len(k) for k in results)
    print(f"\n{benchmark}")
    print(f"| {'metric'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for key, value in results.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        if key in payload["intervals"]:
            low, high = payload["intervals"][key]["interval_95"]
            shown += f" [{low:.3f}, {high:.3f}]"
        print(f"| {key.ljust(width)} | {shown} |")
    print(f"written: {path}")
    return path


def kept_figures(path: Path, settings: dict) -> dict | None:
    """The figures a resumable benchmark kept at ``path`` (:func:`keep_figures`) for the same ``settings``, or None."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored["settings"] == settings:
            return stored["figures"]
    return None


def keep_figures(path: Path, settings: dict, figures: dict) -> None:
    """Keep one finished step's ``figures`` with the ``settings`` they hold for, so that a rerun resumes there."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({"settings": settings, "figures": figures}, indent=2) + "\n")
    os.replace(partial, path)  # whole or absent: another process may be reading it


def kept_array(path: Path, settings: dict, compute) -> tuple[np.ndarray, float]:
    """A resumable step that makes an array (adversarial images, say): the array ``path`` (``.npy``) kept for the same
    ``settings`` by an earlier run, or ``compute()`` now, kept; with the seconds the computation took."""
    array_path, record = path.with_suffix(".npy"), path.with_suffix(".json")
    figures = kept_figures(record, settings)
    if figures is not None and array_path.is_file():
        return np.load(array_path), figures["seconds"]
    start = time.time()
    array = compute()
    seconds = round(time.time() - start, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = array_path.with_name(f".{array_path.stem}.{os.getpid()}.npy")
    np.save(partial, array)
    os.replace(partial, array_path)  # whole or absent: a process sharing the steps may be reading it
    keep_figures(record, settings, {"seconds": seconds})  # written last: it marks the array complete
    return array, seconds


def evaluate_command(config: Path, output_dir: Path, chunk_per_class: int = 5) -> list[str]:
    """The user's command that evaluates ``config`` into ``output_dir``: sharded in chunks of ``chunk_per_class``
    images per class, resumed from the finished chunks of an interrupted run."""
    return ["art-patch-defenses", "evaluate", str(config.relative_to(ROOT)), *EVALUATE_OPTIONS,
            "--chunk-per-class", str(chunk_per_class), "--output-dir", str(output_dir.relative_to(ROOT))]


def run_evaluate(config: Path, output_dir: Path, chunk_per_class: int = 5) -> dict:
    """Run :func:`evaluate_command` (this interpreter's ``art-patch-defenses``) and return the record of the
    config's one scenario from ``output_dir/results.json``."""
    command = evaluate_command(config, output_dir, chunk_per_class)
    subprocess.run([str(Path(sys.executable).with_name(command[0])), *command[1:]], cwd=ROOT, check=True)
    (record,) = json.loads((output_dir / "results.json").read_text())["scenarios"]
    return record


def chunk_seconds(output_dir: Path) -> float:
    """Compute time of a sharded evaluate run: its chunks' seconds summed (a resumed run's chunks came from
    several processes)."""
    total = 0.0
    for path in sorted((output_dir / "shards").glob("evaluate-*/chunk-*.json")):
        record = json.loads(path.read_text())
        total += float(record.get("payload", record).get("seconds", 0.0))
    return round(total, 1)


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out, write (120 dpi) and close a figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
