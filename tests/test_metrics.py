"""Clopper-Pearson accuracy intervals agree with scipy's exact binomial interval and refuse impossible counts."""

import pytest
from scipy.stats import binomtest

from art_patch_defenses.evaluation.metrics import accuracy_interval


@pytest.mark.parametrize("correct, total", [(0, 10), (3, 10), (10, 10), (437, 500), (1, 1)])
def test_clopper_pearson_matches_scipy(correct, total):
    expected = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="exact")
    low, high = accuracy_interval(correct, total)
    assert low == pytest.approx(expected.low, abs=1e-9) and high == pytest.approx(expected.high, abs=1e-9)
    assert low <= correct / total <= high


@pytest.mark.parametrize("correct, total", [(0, 0), (5, 4), (-1, 3)])
def test_impossible_counts_are_refused(correct, total):
    with pytest.raises(ValueError, match="correct <= total"):
        accuracy_interval(correct, total)


def test_benchmark_intervals_come_from_counts():
    """Every benchmark JSON gets its accuracies' counts and Clopper-Pearson intervals from ``write_result``; a value
    that is not a fraction of its images, or a missing key, is refused rather than given an interval."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import accuracy_intervals

    intervals = accuracy_intervals({"clean": 0.75, "speed": 3.2}, {"clean": 400})
    assert set(intervals) == {"clean"}
    assert intervals["clean"]["correct"] == 300 and intervals["clean"]["images"] == 400
    assert intervals["clean"]["interval_95"] == accuracy_interval(300, 400)
    with pytest.raises(ValueError, match="not a fraction"):
        accuracy_intervals({"clean": 0.7512}, {"clean": 400})
    with pytest.raises(ValueError, match="no accuracy"):
        accuracy_intervals({"clean": 0.75}, {"robust": 400})
