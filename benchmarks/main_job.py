"""The main job, measured: a cold ``art-patch-defenses evaluate`` (the embedded default suite), run twice.

Each run is the user's command in a fresh process with an empty data cache (``ART_PATCH_DEFENSES_CACHE`` in a new
temp folder) and its own output folder. The JSON records each run's wall time (``wall_seconds`` is the first, the
cold one), whether both runs gave the same numbers (timings aside), every scenario's figures with its attack, and
the issue's goals checked row by row: wall time <= 180 s; every certifier clean >= 0.85 and certified >= 0.60;
every empirical defence at least 0.15 above the undefended model under the same attack. Measure it with nothing
else running (the environment records the load average before each run).

Run: ``.venv/bin/python benchmarks/main_job.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracy_intervals, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMAND = [str(REPO / ".venv" / "bin" / "art-patch-defenses"), "evaluate", "--quiet"]


def _run(work: Path, index: int) -> tuple[float, dict, float]:
    out = work / f"run{index}"
    env = {**os.environ, "ART_PATCH_DEFENSES_CACHE": str(work / f"cache{index}"), "HF_HUB_OFFLINE": "1",
           "MPLCONFIGDIR": str(work / "mpl")}
    load = os.getloadavg()[0]
    start = time.time()
    subprocess.run([*COMMAND, "--output-dir", str(out)], check=True, env=env, cwd=REPO, capture_output=True)
    return time.time() - start, json.loads((out / "results.json").read_text()), load


def _numbers(payload: dict) -> list[dict]:
    rows = []
    for scenario in payload["scenarios"]:
        results = {k: v for k, v in scenario["results"].items() if k != "seconds"}
        rows.append(results)
    return rows


def _row(scenario: dict) -> dict:
    config, results = scenario["config"], scenario["results"]
    model = config["model"]
    defence = config["defense"]["name"] if config.get("defense") else (
        "none" if model["module"] == "art_patch_defenses.models" else model["module"].rsplit(".", 1)[-1])
    row = {"defence": defence, "attack": config["attack"]["name"], "attack_kwargs": config["attack"].get("kwargs"),
           "patch_pixels": results["patch_pixels"], "n": results["num_samples"],
           "clean": results["benign_mean_categorical_accuracy"],
           "attacked": results["adversarial_mean_categorical_accuracy"],
           "certified": results.get("certified_accuracy"), "certificate_kind": results.get("certificate_kind"),
           "seconds": results["seconds"]}
    # clean, attacked and certified are fractions of the scenario's num_samples images
    row["intervals"] = accuracy_intervals(row, {key: row["n"] for key in ("clean", "attacked", "certified")
                                                if row[key] is not None})
    return row


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="main-job-"))
    runs = [_run(work, index) for index in (1, 2)]
    rows = [_row(s) for s in runs[0][1]["scenarios"]]
    goals = {"wall_seconds_at_most_180": runs[0][0] <= 180}
    for row in rows:
        if row["certified"] is not None:
            goals[f"{row['defence']}: clean >= 0.85, certified >= 0.60"] = (row["clean"] >= 0.85
                                                                          and row["certified"] >= 0.60)
    undefended = {r["attack"]: r["attacked"] for r in rows if r["defence"] == "none"}
    for row in rows:
        if row["certified"] is None and row["defence"] != "none" and row["attack"] in undefended:
            goals[f"{row['defence']}: attacked >= undefended + 0.15 under {row['attack']}"] = (
                row["attacked"] >= undefended[row["attack"]] + 0.15)
    results = {
        "wall_seconds": round(runs[0][0], 1),
        "wall_seconds_second_run": round(runs[1][0], 1),
        "load_average_before": [round(run[2], 2) for run in runs],
        "same_numbers_on_the_second_run": _numbers(runs[0][1]) == _numbers(runs[1][1]),
        "rows": rows,
        "goals_met": goals,
    }
    config = {"command": " ".join(["art-patch-defenses", "evaluate", "--quiet"]),
              "cache": "empty per run (ART_PATCH_DEFENSES_CACHE in a new temp folder)",
              "suite": "art_patch_defenses/evaluation/default_scenario.json"}
    write_result("main_job", config, results)


if __name__ == "__main__":
    main()
