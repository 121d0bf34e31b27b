"""Reports of a suite run: one JSON, a Markdown table and a PNG (accuracy bars and example images), each written
atomically (a reader never sees half a file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from art_patch_defenses.evaluation.results import (
    ScenarioResult,
    atomic_path,
    scenario_label,
    write_atomic,
    write_json_atomic,
)

TABLE_HEADER = (
    "| model | defence | attack | patch (px, area) | n | benign acc | adversarial acc | certified acc "
    "| abstain / alert (benign, adv.) | max change outside patch |",
    "|---|---|---|---|---|---|---|---|---|---|",
)


def _certified(results: dict) -> str:
    if "certified_accuracy" not in results:
        return "-"
    side = results["certified_patch_pixels"]
    return f"{results['certified_accuracy']:.3f} ({side}x{side})"


def _abstain(results: dict) -> str:
    if "certified_accuracy" not in results:  # only certifiers abstain or alert
        return "-"
    return f"{results['abstain_rate_benign']:.3f}, {results.get('abstain_rate_adversarial', float('nan')):.3f}"


def markdown_table(outcomes: list[ScenarioResult]) -> str:
    """A Markdown table, one row per scenario, with the attack's patch geometry beside its numbers."""
    rows = list(TABLE_HEADER)
    for outcome in outcomes:
        model, defense, attack = scenario_label(outcome.record["config"])
        r = outcome.record["results"]
        patch = f"{r['patch_pixels'][0]}x{r['patch_pixels'][1]}, {100 * r['patch_area_fraction']:.1f}%"
        rows.append(
            f"| {model} | {defense} | {attack} | {patch} | {r['num_samples']} | "
            f"{r['benign_mean_categorical_accuracy']:.3f} | {r['adversarial_mean_categorical_accuracy']:.3f} | "
            f"{_certified(r)} | {_abstain(r)} | {r['max_change_outside_patch']:.2g} |"
        )
    return "\n".join(rows)


def _show(axis, image: np.ndarray, title: str) -> None:
    picture = image.transpose(1, 2, 0)
    axis.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
    axis.set_title(title, fontsize=7)
    axis.axis("off")


def plot_report(outcomes: list[ScenarioResult], path: Path) -> None:
    """Accuracy bars per scenario, then for each scenario a row of clean and patched examples with labels; the PNG
    is written atomically."""
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_examples = min(len(o.examples["x"]) for o in outcomes)
    figure = plt.figure(figsize=(max(8, 1.3 * 2 * n_examples), 3 + 1.6 * len(outcomes)))
    grid = figure.add_gridspec(1 + len(outcomes), 2 * n_examples, height_ratios=[2.2] + [1] * len(outcomes))
    bars = figure.add_subplot(grid[0, :])
    labels = ["\n".join(scenario_label(o.record["config"])) for o in outcomes]
    positions = np.arange(len(outcomes))
    benign = [o.record["results"]["benign_mean_categorical_accuracy"] for o in outcomes]
    adversarial = [o.record["results"]["adversarial_mean_categorical_accuracy"] for o in outcomes]
    bars.bar(positions - 0.2, benign, 0.4, label="benign")
    bars.bar(positions + 0.2, adversarial, 0.4, label="adversarial")
    bars.set_xticks(positions, labels, fontsize=7)
    bars.set_ylim(0, 1)
    bars.set_ylabel("accuracy")
    bars.legend(fontsize=7)
    for row, outcome in enumerate(outcomes, start=1):
        e = outcome.examples
        names = e["class_names"]

        def name(label: int, names=names) -> str:
            return "abstain" if label < 0 else str(names[label])

        for i in range(n_examples):
            _show(figure.add_subplot(grid[row, 2 * i]), e["x"][i], f"clean: {name(e['benign'][i])}")
            _show(figure.add_subplot(grid[row, 2 * i + 1]), e["x_adv"][i], f"adv: {name(e['adversarial'][i])}")
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")  # the temporary name's suffix is not .png
    finally:
        plt.close(figure)


def write_reports(description: str, outcomes: list[ScenarioResult], output_dir: Path, *, status: str = "complete",
                  total: int | None = None) -> dict[str, str]:
    """Write ``results.json``, ``report.md`` and ``report.png`` into ``output_dir`` atomically; return their paths.

    :param status: the run's status (``complete``, or ``interrupted`` / ``failed`` for the scenarios that finished
        before the run stopped: then no PNG, and both files say how many of ``total`` finished).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    total = len(outcomes) if total is None else total
    files = {"json": str(output_dir / "results.json"), "markdown": str(output_dir / "report.md")}
    payload = {"_description": description, "status": status, "scenarios_complete": len(outcomes),
               "scenarios_total": total, "scenarios": [o.record for o in outcomes]}
    write_json_atomic(files["json"], payload)  # first: the numbers matter most
    table = markdown_table(outcomes)
    if status == "complete":
        write_atomic(files["markdown"], f"# Evaluation\n\n{description}\n\n{table}\n\n![report](report.png)\n")
        files["png"] = str(output_dir / "report.png")
        plot_report(outcomes, Path(files["png"]))
    else:
        note = f"**Run {status}: {len(outcomes)} of {total} scenarios finished** (see manifest.json)."
        write_atomic(files["markdown"], f"# Evaluation\n\n{description}\n\n{note}\n\n{table}\n")
    return files
