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
