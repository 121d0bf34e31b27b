"""The CIFAR-10 leaderboard, assembled from committed configs run through the user's path.

Each row is one config in ``examples/configs/leaderboard/`` (the fine-tuned ResNet-20 family; ART's own
``PyTorchDeRandomizedSmoothing`` on the Mask-DS bands as the existing ART baseline), run by

    art-patch-defenses evaluate examples/configs/leaderboard/cifar10_<row>.json \\
        --sharded --resume --quiet --chunk-per-class 5 --output-dir outputs/leaderboard/<row>

(MRS: ``--chunk-per-class 1``, 10-image chunks, since its predict takes seconds per image) on 500 class-balanced
shared CIFAR-10 test images (seed 0), attacked white-box by ``PatchAutoAttack`` with a 5x5 patch (2.4%). This
script only runs those commands (``--assemble`` skips them) and assembles their ``results.json`` into
``benchmarks/results/leaderboard_cifar10.json``, ``docs/leaderboard.md`` and ``docs/leaderboard.png``. Columns:

- ``clean``: the defended prediction on the clean images (an abstention or alert counts as wrong);
- for a certified detector, ``right or alert``: the same ensemble from ``cifar10_<row>_alert_is_safe.json``, where an
  image is fooled only by a wrong label without an alert (the detection threat model);
- ``robust``: right under the whole ensemble, per image (worst case over every attack and placement and the random
  search); beside it the white-box part alone and the gradient-free random search alone. An empirical defence whose
  random search is more than 0.02 below its white-box figure is flagged ``gradient masking suspected``;
- three certificate columns that are never mixed: certified recovery (right for any 5x5 patch), certified detection
  (right or an alert for any 5x5 patch: an alert counts as safe there, and as wrong in every other column) and
  MRS's region-L2 bound (right with an L2 radius of at least 25/255 inside the localised region; not a patch
  certificate), each from the row's own ``certify``.

Every accuracy carries its 95% Clopper-Pearson interval. Run ``.venv/bin/python benchmarks/leaderboard_cifar10.py``
(``--rows undefended fnc`` for some rows; a run interrupted part-way resumes from its finished chunks). A row that
takes longer than a session (MRS, :data:`LONG_RUNS`) is run across sessions: ``--keep-chunks`` copies its finished
chunks into ``benchmarks/results/leaderboard_chunks/<row>`` to be committed, and the next run (in a fresh checkout)
copies them back and continues.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, ROOT, chunk_seconds, environment, evaluate_command, pyplot, run_evaluate, save_figure  # noqa: E402

from art_patch_defenses.certification import DETECTION, RECOVERY, REGION_L2  # noqa: E402
from art_patch_defenses.evaluation.metrics import accuracy_interval  # noqa: E402

CONFIGS = ROOT / "examples" / "configs" / "leaderboard"
OUTPUTS = ROOT / "outputs" / "leaderboard"
LEADERBOARD_JSON = RESULTS_DIR / "leaderboard_cifar10.json"
DOCS = ROOT / "docs"
ROWS = {
    "undefended": "undefended ResNet-20", "fnc": "FNC", "patchzero": "PatchZero",
    "patchzero_masked": "PatchZero, mask-trained ResNet-20",
    "robust_masking": "robust masking (cropped-band Mask-DS)",
    "art_derandomized_smoothing": "ART PyTorchDeRandomizedSmoothing (cropped-band Mask-DS)",
    "mrs": "MRS", "scalecert": "ScaleCert", "patchcleanser": "PatchCleanser",
}
EMPIRICAL = ("undefended", "fnc", "patchzero", "patchzero_masked")
#: Rows whose run takes longer than a session on this machine, and why; they are run across sessions with their
#: finished chunks kept in :data:`KEPT_CHUNKS` (shown beside "pending" until the row is complete).
LONG_RUNS = {
    "mrs": "one MRS predict localises and smooths (about 1,800 forward passes: 2.0 s per image at one thread, "
           "benchmarks/results/mrs_cifar10.json as of commit 4618049, this row's model and sigma), so the ensemble's "
           "100-query random search alone is up to 50,000 predicts on 500 images (it stops at an image's first "
           "fooling query), up to 28 CPU-hours, and the white-box part judges up to 15 candidates per image with it "
           "(up to 4.3 CPU-hours more), on a machine of 2 CPU cores; run across sessions, its finished chunks kept "
           "in benchmarks/results/leaderboard_chunks/mrs",
}
#: Finished chunks of a row whose run spans sessions (MRS), committed so that a fresh checkout continues the run
#: instead of starting it again: ``--keep-chunks`` writes them, ``run`` reads back what its output dir lacks.
KEPT_CHUNKS = RESULTS_DIR / "leaderboard_chunks"
MASKING_TOLERANCE = 0.02  # random search this far below the white-box figure: the gradients mislead the attack
CERTIFICATE_COLUMNS = {RECOVERY: "certified_recovery", DETECTION: "certified_detection", REGION_L2: "region_l2_bound"}


def chunk_per_class(row: str) -> int:
    """Images per class in one chunk of the row's run: 5 (50-image chunks), 1 for MRS, whose 50 images would take
    hours (a chunk is what an interrupted session keeps)."""
    return 1 if row.startswith("mrs") else 5


def command(row: str) -> list[str]:
    """The user's command that produces ``row``."""
    return evaluate_command(CONFIGS / f"cifar10_{row}.json", OUTPUTS / row, chunk_per_class(row))


def run(row: str) -> None:
    restore_chunks(row)
    run_evaluate(CONFIGS / f"cifar10_{row}.json", OUTPUTS / row, chunk_per_class(row))


def run_files(row: str) -> list[Path]:
    """What a resumed run of ``row`` needs, relative to its output dir: its config and its finished chunk files."""
    base = OUTPUTS / row
    stores = sorted((base / "shards").glob("evaluate-*"))
    members = [path for store in stores for path in sorted(store.iterdir()) if path.suffix in (".json", ".npz")]
    return [path.relative_to(base) for path in [base / "config.json", *members] if path.is_file()]


def keep_chunks(row: str) -> None:
    """Copy ``row``'s finished chunks (and its config) into :data:`KEPT_CHUNKS`, to be committed."""
    for name in run_files(row):
        target = KEPT_CHUNKS / row / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(OUTPUTS / row / name, target)


def restore_chunks(row: str) -> None:
    """Copy the kept chunks of ``row`` that its output dir lacks back into it (``evaluate --resume`` checks that they
    belong to this config, seed, chunking, weights and version)."""
    kept = KEPT_CHUNKS / row
    for path in sorted(kept.rglob("*")) if kept.is_dir() else []:
        target = OUTPUTS / row / path.relative_to(kept)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def fraction(value: float, n: int) -> dict:
    """An accuracy with its count and 95% Clopper-Pearson interval."""
    correct = int(round(value * n))
    return {"value": correct / n, "correct": correct, "images": n, "interval_95": accuracy_interval(correct, n)}


def assemble(row: str) -> dict:
    """The leaderboard row of ``row`` from its evaluate output."""
    (record,) = json.loads((OUTPUTS / row / "results.json").read_text())["scenarios"]
    config, results = record["config"], record["results"]
    n, report = int(results["num_samples"]), results["attack_report"]
    labels = class_counts(config)
    entry = {
        "title": ROWS[row],
        "config": str((CONFIGS / f"cifar10_{row}.json").relative_to(ROOT)),
        "command": " ".join(command(row)),
        "model": config["model"], "defense": config.get("defense"),
        "weights": weights_record(config, results.get("weights_sha256")),
        "attacked_images": n,
        "images_per_class": labels,
        "class_balanced": max(labels.values()) - min(labels.values()) <= 1,
        "seed": {"dataset": config["dataset"]["seed"], "attack": config["attack"]["seed"]},
        "patch": {"pixels": [5, 5], "area_fraction": 25 / 1024,
                  "placements": report["placements"], "first_placement": "uniformly random, from attack.seed"},
        "attack": {"name": "PatchAutoAttack", "white_box_attacks": report["attacks"], "budget": report["budget"]},
        "clean_accuracy": fraction(results["benign_mean_categorical_accuracy"], n),
        "robust_accuracy": fraction(results["adversarial_mean_categorical_accuracy"], n),
        "white_box_accuracy": fraction(report["white_box_accuracy"], n),
        "random_search_accuracy": fraction(report["random_search_accuracy"], n),
        "accuracy_after_each_attack": report["accuracy_after"],
        "abstain_or_alert_rate": {"clean": results["abstain_rate_benign"],
                                  "attacked": results["abstain_rate_adversarial"]},
        "max_change_outside_patch": results["max_change_outside_patch"],
        "seconds": chunk_seconds(OUTPUTS / row),
    }
    if row in EMPIRICAL:
        gap = entry["white_box_accuracy"]["value"] - entry["random_search_accuracy"]["value"]
        entry["gradient_masking_suspected"] = bool(gap > MASKING_TOLERANCE)
    for kind, column in CERTIFICATE_COLUMNS.items():
        if results.get("certificate_kind") == kind:
            entry[column] = {**fraction(results["certified_accuracy"], n),
                             "patch_pixels": [results["certified_patch_pixels"]] * 2}
    if status(f"{row}_alert_is_safe") == "complete":  # the detection threat model: an alert counted as safe
        (safe,) = json.loads((OUTPUTS / f"{row}_alert_is_safe" / "results.json").read_text())["scenarios"]
        entry["attacked_right_or_alert"] = {
            **fraction(safe["results"]["adversarial_right_or_alert"], n),
            "config": str((CONFIGS / f"cifar10_{row}_alert_is_safe.json").relative_to(ROOT)),
            "command": " ".join(command(f"{row}_alert_is_safe")),
            "attack": "the row's ensemble with alert_is_safe: an image is fooled only by a wrong label without an "
                      "alert",
            "random_search_accuracy": safe["results"]["attack_report"]["random_search_accuracy"],
            "white_box_accuracy": safe["results"]["attack_report"]["white_box_accuracy"]}
    if "detector_recall" in results:
        entry["detector_on_attacked"] = {key: results[f"detector_{key}"] for key in ("precision", "recall", "f1")}
    return entry


def status(run_name: str) -> str:
    """The evaluate run's status from its manifest ("complete" once every scenario finished)."""
    manifest = OUTPUTS / run_name / "manifest.json"
    return json.loads(manifest.read_text()).get("status", "unknown") if manifest.is_file() else "not started"


def progress(row: str) -> str:
    """How far an unfinished row's run got: its finished chunks (of ``chunk_per_class`` images per class each)."""
    chunks = list((OUTPUTS / row / "shards").glob("evaluate-*/chunk-*.json"))
    return f"{len(chunks)} of {50 // chunk_per_class(row)} chunks finished" if chunks else "not started"


def weights_record(config: dict, evaluated: str | None) -> dict:
    """The files behind a row and their sha256 (the model's registered weights and a defence's checkpoint), and
    ``evaluated``: the fingerprint of the weights the run evaluated (``weights_sha256`` in its results; None for a
    run from before the fingerprint)."""
    import importlib

    from art_patch_defenses.models import sha256_of
    from art_patch_defenses.models.registry import weights_path
    from art_patch_defenses.paths import checkpoints_dir

    importlib.import_module(config["model"]["module"])  # a defence registers its weights tags on import
    model = config["model"]["model_kwargs"]
    path = weights_path(model["name"], model["weights"])
    record = {"model": model["name"], "weights": path.name, "sha256": sha256_of(path), "evaluated_sha256": evaluated}
    defense_file = (config.get("defense") or {}).get("kwargs", {}).get("path")
    if defense_file:
        record.update(defense_checkpoint=defense_file, defense_sha256=sha256_of(checkpoints_dir() / defense_file))
    return record


def stale_weights(row: str, previous: dict | None) -> str | None:
    """Why the row's runs (and its detection-threat-model run) cannot be assembled with the weights on disk now:
    each run records the fingerprint of the weights it evaluated (``weights_sha256``), compared here with the
    fingerprint of the estimator its config builds today. A run from before the fingerprint is accepted only while
    the files' sha256 equal those recorded when it was last assembled (``previous``, its board entry)."""
    from art_patch_defenses.evaluation.runner import build_estimator, weights_sha256

    for run_name in (row, f"{row}_alert_is_safe"):
        if status(run_name) != "complete":
            continue
        (record,) = json.loads((OUTPUTS / run_name / "results.json").read_text())["scenarios"]
        ran = record["results"].get("weights_sha256")
        if ran is None:
            files = {key: value for key, value in weights_record(record["config"], None).items()
                     if key != "evaluated_sha256"}
            recorded = {key: value for key, value in ((previous or {}).get("weights") or {}).items()
                        if key != "evaluated_sha256"}
            if files != recorded:
                return (f"run {run_name} predates the weights fingerprint and its weights files differ from those "
                        "recorded at its last assembly: rerun it")
            continue
        now = weights_sha256(build_estimator(record["config"]))
        if ran != now:
            return f"run {run_name} evaluated weights {str(ran)[:12]}, the config builds {now[:12]} now: rerun it"
    return None


def class_counts(config: dict) -> dict[str, int]:
    from art_patch_defenses.data import load_dataset

    data = config["dataset"]
    y = load_dataset(data["name"], data.get("eval_split", "test"), n=data["n"], seed=data["seed"]).y
    return {str(label): int(count) for label, count in zip(*np.unique(y, return_counts=True), strict=True)}


def cell(entry: dict, key: str) -> str:
    if key not in entry:
        return "-"
    value, (low, high) = entry[key]["value"], entry[key]["interval_95"]
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


def render(board: dict) -> None:
    """``docs/leaderboard.md`` and ``docs/leaderboard.png`` from the leaderboard JSON."""
    rows = board["rows"]
    lines = [
        "# Leaderboard: CIFAR-10, ResNet-20 family",
        "",
        "Generated by `.venv/bin/python benchmarks/leaderboard_cifar10.py` from "
        "`benchmarks/results/leaderboard_cifar10.json`; every row is a committed config in "
        "`examples/configs/leaderboard/` run by `art-patch-defenses evaluate` (the command, the weights files and "
        "their sha256 are in the JSON).",
        "",
        "- Data: 500 class-balanced shared CIFAR-10 JPEG test images (50 per class, seed 0); every row attacks all "
        "500.",
        "- Attack: `PatchAutoAttack`, white-box against the defended estimator, 5x5 patch (2.4%): per image the worst "
        "case over (empirical rows) a placement scan (a seeded random patch at every place of a stride-2 grid, judged "
        "by `predict`; its worst place becomes a fourth placement), masked PGD (step 0.05 x 50 and 0.01 x 100), "
        "masked AutoPGD (50 iterations, untargeted and targeted at the 2 most likely other classes) and the "
        "defence's adaptive attack (PatchZero: joint classifier + detector-evasion loss through BPDA; MRS: "
        "expectation over its noise), at 3 placements (random from the seed, another random, the largest loss "
        "gradient) and the scanned one, then a gradient-free random search "
        "over patch place and content (300 queries for empirical defences, 100 for certifiers, whose predict costs "
        "20-500 forward passes). Certifiers are attacked through their `attack_surrogate()` and judged by their "
        "`predict`.",
        "- White-box part: the scan (gradient-free, but it knows the threat model) and the gradient attacks, before "
        "the random search; a row is flagged 'gradient masking suspected' when the random search alone leaves more "
        f"than {MASKING_TOLERANCE} less. The accuracy after each attack is in the JSON. "
        "Robust = right under the whole ensemble; an abstention or alert counts as wrong in every column except "
        "the two of the detection threat model: right or alert under the same ensemble run with `alert_is_safe` "
        "(an image is fooled only by a wrong label without an alert), and certified detection. Intervals: 95% "
        "Clopper-Pearson.",
        "- Certificates are in separate columns, each from the row's own `certify` for a 5x5 patch: certified "
        "recovery (right for any patch), certified detection (right or an alert for any patch), and MRS's "
        "region-L2 bound (an L2 radius >= 25/255 inside the localised region: not a certificate against any patch).",
        f"- Seconds: the evaluate run's compute time ({board['threads']}).",
        "",
        "| defence | clean | robust (ensemble) | white-box part | random search | right or alert (detection "
        "threat model) | certified recovery | certified detection | region-L2 bound | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, title in ROWS.items():
        entry = rows.get(name)
        if entry is None:
            state = board["pending"].get(name, "not started")
            why = f"pending: {state}" + (f" ({LONG_RUNS[name]})" if name in LONG_RUNS else "")
            lines.append(f"| {title} | {why} | | | | | | | | |")
            continue
        flag = " (gradient masking suspected)" if entry.get("gradient_masking_suspected") else ""
        cells = [cell(entry, key) for key in ("clean_accuracy", "robust_accuracy", "white_box_accuracy",
                                              "random_search_accuracy", "attacked_right_or_alert",
                                              "certified_recovery", "certified_detection", "region_l2_bound")]
        cells[1] += flag
        if f"{name}_alert_is_safe" in board["pending"]:  # its detection-threat-model run is still going
            cells[4] = f"pending: {board['pending'][f'{name}_alert_is_safe']}"
        lines.append(" | ".join([f"| {title}", *cells, f"{entry['seconds']:.0f} |"]))
    lines += ["", "![leaderboard](leaderboard.png)", ""]
    (DOCS / "leaderboard.md").write_text("\n".join(lines))

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    present = [name for name in ROWS if name in rows]
    keys = ["clean_accuracy", "robust_accuracy", "random_search_accuracy", "attacked_right_or_alert",
            "certified_recovery", "certified_detection", "region_l2_bound"]
    width = 0.12
    for k, key in enumerate(keys):
        values = [rows[name][key]["value"] if key in rows[name] else 0.0 for name in present]
        ax.bar(np.arange(len(present)) + (k - 3) * width, values, width, label=key.replace("_", " "))
    ax.set_xticks(np.arange(len(present)), [ROWS[name] for name in present], fontsize=7)
    ax.set_ylabel("accuracy (500 images)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("CIFAR-10, 5x5 patch: PatchAutoAttack ensemble (white-box) and each row's own certificate")
    save_figure(fig, DOCS / "leaderboard.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--assemble", action="store_true", help="only assemble the rows' finished outputs")
    parser.add_argument("--keep-chunks", action="store_true",
                        help="copy the finished chunks of the rows that are not complete into "
                             "benchmarks/results/leaderboard_chunks (commit them: a fresh checkout continues the run)")
    parser.add_argument("--threads", default=f"torch threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
                        help="how the runs shared the cores (recorded)")
    args = parser.parse_args()
    board = json.loads(LEADERBOARD_JSON.read_text()) if LEADERBOARD_JSON.is_file() else {}
    if "threads" not in board:  # the earlier, library-called leaderboard is replaced, not mixed in
        board = {"rows": {}}
    for row in args.rows:
        if not args.assemble:
            run(row)
            if (CONFIGS / f"cifar10_{row}_alert_is_safe.json").is_file():
                run(f"{row}_alert_is_safe")
        restore_chunks(row)
        if status(row) == "complete":
            problem = stale_weights(row, board["rows"].get(row))
            if problem:
                board["rows"].pop(row, None)
                print(f"{row}: {problem}; not on the board", flush=True)
            else:
                board["rows"][row] = assemble(row)
        else:
            print(f"{row}: run {status(row)}; not on the board yet", flush=True)
    board.update(threads=args.threads, environment=environment(),
                 pending={**{row: progress(row) for row in ROWS if row not in board["rows"]},
                          **{f"{row}_alert_is_safe": progress(f"{row}_alert_is_safe") for row in board["rows"]
                             if (CONFIGS / f"cifar10_{row}_alert_is_safe.json").is_file()
                             and "attacked_right_or_alert" not in board["rows"][row]}},
                 long_runs={row: why for row, why in LONG_RUNS.items() if row not in board["rows"]})
    board.pop("not_run", None)  # the name of long_runs before runs were kept across sessions
    if args.keep_chunks:
        for row in args.rows:
            if status(row) == "complete":  # its figures are on the board; the chunks stay in git's history
                shutil.rmtree(KEPT_CHUNKS / row, ignore_errors=True)
            else:
                keep_chunks(row)
    LEADERBOARD_JSON.write_text(json.dumps(board, indent=2) + "\n")
    render(board)
    print((DOCS / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
