"""``benchmarks/training_curves.py``: the training-log parser, and that ``docs/training.md`` is what the script makes
from the committed logs and results (so the page cannot drift from them)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import training_curves  # noqa: E402

LOG = (
    "command: python -m x.train --epochs 2\n"
    "continues from a.pt (sha256 " + "ab" * 32 + ")\n"
    "holdout before: 1000 training images, 5x5 patch, top-k 0.2, r 3, tau 0.3: clean 0.5000 certified 0.4000 "
    "alerts 0.5000\n"
    "train 1/2:  10%|#   | 38/383 [00:10<01:30, 3.8it/s]\rtrain 1/2: 100%|####| 383/383 [01:40<00:00, 3.8it/s]\n"
    "epoch 1/2 train_loss 0.9000 train_acc 0.6000 lr_end 0.00500 seconds 100\n"
    "epoch 2/2 train_loss 0.8000 train_acc 0.7000 lr_end 0.00000 seconds 101\n"
    "holdout after: 1000 training images, 5x5 patch, top-k 0.2, r 3, tau 0.3: clean 0.6000 certified 0.5500 "
    "alerts 0.4000\n"
    '{"checkpoint": "b.pt", "sha256": "' + "cd" * 32 + '", "seconds": 201}\n'
    "\n## a second run in the same log\n"
    "command: python -m y.train\n"
    "before: 1000 held-out training images (x): clean 0.9680 without FNC, 0.5000 with FNC at alpha [1.0]\n"
    "stage 1 epoch 1/2 loss 0.1520\n"
    "stage 2 step 50/100 loss 0.0894\n"
    "stage 2 step 100/100 loss 0.0628\n"
)


def test_parse_runs_reads_every_line_kind_and_skips_progress_bars():
    first, second = training_curves.parse_runs(LOG, "x.log")
    assert first.command == "python -m x.train --epochs 2" and first.parent_sha256 == "ab" * 32
    assert first.holdout == {"before": {"clean": 0.5, "certified": 0.4, "alerts": 0.5},
                             "after": {"clean": 0.6, "certified": 0.55, "alerts": 0.4}}
    assert [e["train_acc"] for e in first.epochs] == [0.6, 0.7]
    assert first.record["sha256"] == "cd" * 32
    assert second.parent_sha256 is None and second.epochs == []
    assert second.holdout["before"] == {"clean_without_fnc": 0.968, "clean_with_fnc": 0.5}
    assert second.stage1_loss == [0.152] and second.stage2_loss == [(50, 0.0894), (100, 0.0628)]


def test_a_continued_run_starts_where_its_parent_ended():
    first, second = training_curves.parse_runs(LOG, "x.log")
    ends = {"ab" * 32: 11.0}
    assert training_curves._start(first, ends) == 11.0
    assert training_curves._start(second, ends) == 0.0  # no parent named: its own axis
    phase = training_curves._phase(first, kept=True, start=11.0)
    assert phase["x"] == [12.0, 13.0] and phase["end"] == 13.0


def test_the_committed_page_is_what_the_committed_logs_make(tmp_path):
    curves = {row.name: training_curves.row_curves(row) for row in training_curves.ROWS}
    made = tmp_path / "training.md"
    training_curves.write_markdown(curves, made)
    assert made.read_text() == (ROOT / "docs" / "training.md").read_text(), (
        "docs/training.md is stale: run .venv/bin/python benchmarks/training_curves.py")
