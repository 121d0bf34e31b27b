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
    "| model | defence | attack | patch (px, area) | n | clean acc | attacked acc | certified acc (kind, patch) "
    "| abstain / alert (clean, attacked) | max change outside patch |",
    "|---|---|---|---|---|---|---|---|---|---|",
)
#: What the columns mean, printed under every table.
TABLE_LEGEND = (
    "clean / attacked acc: the defended prediction right on clean / attacked images (an abstention or alert counts "
    "as wrong). certified acc, from the certifier's own certify on the clean images, for the patch it is configured "
    "for: recovery = right and no patch of that size anywhere can change the prediction; detection = right and any "
    "such patch either leaves it right or raises an alert; region-L2 = right with an L2 radius of at least 25/255 "
    "inside the localised region (not a patch certificate). Empirical defences certify nothing (-)."
)
KIND_SHORT = {"recovery": "recovery", "detection": "detection", "region-L2": "region L2"}


def _certified(results: dict) -> str:
    if "certified_accuracy" not in results:
        return "-"
    side = results["certified_patch_pixels"]
    kind = KIND_SHORT.get(results.get("certificate_kind", ""), "")
    return f"{results['certified_accuracy']:.3f} ({kind}, {side}x{side})"


def _abstain(results: dict) -> str:
    if "certified_accuracy" not in results:  # only certifiers abstain or alert
        return "-"
    return f"{results['abstain_rate_benign']:.3f}, {results.get('abstain_rate_adversarial', float('nan')):.3f}"


def markdown_table(outcomes: list[ScenarioResult]) -> str:
    """A Markdown table, one row per scenario, with the attack's patch geometry beside its numbers, and a legend."""
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
    return "\n".join(rows) + "\n\n" + TABLE_LEGEND


def _show(axis, image: np.ndarray, title: str) -> None:
    picture = image.transpose(1, 2, 0)
    axis.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
    axis.set_title(title, fontsize=7)
    axis.axis("off")


def _label_name(label: int, names, certificate_kind: str | None) -> str:
    if 0 <= label < len(names):
        return str(names[label])
    if label >= 0:  # a model class the data set's folders do not name (e.g. 1000 ImageNet classes, 2 folders)
        return f"class {label}"
    return "alert" if certificate_kind == "detection" else "abstain"


def plot_report(outcomes: list[ScenarioResult], path: Path) -> None:
    """Clean, attacked and certified accuracy per scenario, then for each scenario a titled row of examples (true
    label, clean prediction, attacked prediction or abstain / alert); the PNG is written atomically."""
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_examples = min(len(o.examples["x"]) for o in outcomes)
    figure = plt.figure(figsize=(max(9, 1.35 * 2 * n_examples), 4.4 + 1.9 * len(outcomes)), layout="constrained")
    top, *rows = figure.subfigures(1 + len(outcomes), 1, height_ratios=[2.6] + [1] * len(outcomes))
    bars = top.subplots()
    labels = ["\n".join(scenario_label(o.record["config"])[1:]) for o in outcomes]  # defence, attack
    positions = np.arange(len(outcomes))
    results = [o.record["results"] for o in outcomes]
    columns = (("clean", "benign_mean_categorical_accuracy"), ("attacked", "adversarial_mean_categorical_accuracy"),
               ("certified (clean images)", "certified_accuracy"))
    for k, (name, key) in enumerate(columns):
        values = [r.get(key, np.nan) for r in results]
        drawn = bars.bar(positions + (k - 1) * 0.27, np.nan_to_num(values), 0.27, label=name)
        bars.bar_label(drawn, [("" if np.isnan(v) else f"{v:.2f}") for v in values], fontsize=6)
    bars.set_xticks(positions, labels, fontsize=7)
    bars.set_ylim(0, 1.12)
    bars.set_ylabel("accuracy")
    bars.set_title("Accuracy per scenario: clean, under the scenario's attack, certified (certifiers only)", fontsize=9)
    bars.legend(fontsize=7, ncol=3, loc="upper right")
    for row, outcome in zip(rows, outcomes, strict=True):
        e, kind = outcome.examples, outcome.record["results"].get("certificate_kind")
        names = e["class_names"]
        row.suptitle(" / ".join(scenario_label(outcome.record["config"])), fontsize=8, fontweight="bold", x=0.02,
                     ha="left")
        axes = row.subplots(1, 2 * n_examples)
        for i in range(n_examples):
            _show(axes[2 * i], e["x"][i], f"true {names[e['y'][i]]}, clean: {_label_name(e['benign'][i], names, kind)}")
            _show(axes[2 * i + 1], e["x_adv"][i], f"attacked: {_label_name(e['adversarial'][i], names, kind)}")
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
