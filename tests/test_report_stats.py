"""The report's statistics come from scipy: the t quantile, Spearman's correlation and the paired
percentile bootstrap, each against a case with a known answer."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from largebatch.compare.kind import diagnose
from largebatch.report.data import spearman, stat, t_quantile
from largebatch.report.gap import (
    RESAMPLES,
    Estimate,
    bootstrap_estimates,
    gap_closed,
    paired_difference,
)


def test_t_quantile_is_students_not_the_normals():
    assert t_quantile(40) == pytest.approx(2.0227, abs=1e-4)  # 39 degrees of freedom, not 1.96
    assert t_quantile(3) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(2) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(1000) == pytest.approx(1.9623, abs=1e-4)
    assert math.isnan(t_quantile(1))
    values = [float(v) for v in range(40)]
    s = stat(values)
    assert s.ci95 == pytest.approx(2.0227 * statistics.stdev(values) / math.sqrt(40), rel=1e-4)


def test_spearman_with_ties_is_the_hand_computed_value():
    """x = [1, 2, 2, 3] ranks 1, 2.5, 2.5, 4; y = [1, 3, 2, 4] ranks 1, 3, 2, 4: the Pearson
    correlation of the ranks is 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)."""
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear


def test_spearman_is_nan_when_there_is_nothing_to_rank():
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))  # fewer than 3 pairs
    assert math.isnan(spearman([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]))  # lr/B constant (linear rule)
    assert math.isnan(spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))
    # non-finite pairs are left out: what is left decides
    assert spearman([1.0, 2.0, math.nan, 3.0], [3.0, 2.0, 5.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0, math.nan, 3.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="3 x values but 2"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


def test_bootstrap_of_constant_differences_is_a_zero_width_interval_at_that_value():
    a = {s: 0.9 + 0.01 * s for s in range(8)}
    b = {s: v - 0.025 for s, v in a.items()}
    diff = paired_difference(a, b)
    assert diff.value == pytest.approx(0.025)
    assert diff.low == pytest.approx(0.025) and diff.high == pytest.approx(0.025)


def test_bootstrap_of_normal_data_is_close_to_the_t_interval():
    """40 normal paired differences: the percentile interval of the mean is close to
    ``mean +- t s / sqrt(n)`` (slightly narrower: the bootstrap's spread is ``s sqrt((n-1)/n)``
    and uses the normal's tails)."""
    rng = np.random.default_rng(1)
    d = rng.normal(0.5, 2.0, size=40)
    a = {s: float(v) for s, v in enumerate(d)}
    b = dict.fromkeys(range(40), 0.0)
    est = paired_difference(a, b)
    half = t_quantile(40) * np.std(d, ddof=1) / math.sqrt(40)
    assert est.value == pytest.approx(d.mean())
    assert est.low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert est.high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert est.high - est.low == pytest.approx(2 * half, rel=0.1)


def test_bootstrap_is_deterministic_and_keeps_its_resample_count():
    cols = np.random.default_rng(2).normal(size=(6, 2))
    statistic = lambda c: np.mean(c[..., 0] - c[..., 1], axis=-1)  # noqa: E731
    first = bootstrap_estimates(cols, statistic)
    assert first == bootstrap_estimates(cols, statistic)
    assert first != bootstrap_estimates(cols, statistic, seed=1)
    # the percentile interval of RESAMPLES resamples drawn as rng.integers(0, n, (R, n))
    picks = np.random.default_rng(0).integers(0, 6, size=(RESAMPLES, 6))
    draws = statistic(cols[picks])
    low, high = np.percentile(draws, [2.5, 97.5])
    assert first[0].low == pytest.approx(low, abs=1e-12)
    assert first[0].high == pytest.approx(high, abs=1e-12)


def test_several_statistics_share_the_resamples():
    """The diagnosis's D, F and G come from one call: G = D - F holds resample by resample, so the
    intervals of D - F and G are the same."""
    cols = np.random.default_rng(3).normal(size=(7, 4))

    def three(c):
        d = np.mean(c[..., 1] - c[..., 3], axis=-1)
        f = np.mean(c[..., 0] - c[..., 2], axis=-1)
        return np.stack([d, f, d - f, d + 0 * f])

    d, f, g, d_again = bootstrap_estimates(cols, three)
    assert (d_again.low, d_again.high) == (d.low, d.high)
    assert g.value == pytest.approx(d.value - f.value)
    small = {s: (0.99, 0.95 + 0.002 * s) for s in range(5)}
    large = {s: (0.98, 0.93 + 0.003 * s) for s in range(5)}
    result = diagnose(small, large)
    assert result.generalization_gap.value == pytest.approx(
        result.val_gap.value - result.fit_gap.value
    )


def test_undefined_resamples_are_left_out_and_one_seed_has_no_interval():
    # seed 1's gap is 0: a resample of seed 1 alone has no "closed" fraction
    small, large, fix = (
        {0: 0.9, 1: 0.9, 2: 0.92},
        {0: 0.88, 1: 0.9, 2: 0.9},
        {0: 0.89, 1: 0.9, 2: 0.9},
    )
    with np.errstate(all="raise"):
        result = gap_closed(small, large, fix)
    assert result.value == pytest.approx(0.25)
    assert np.isfinite(result.low) and np.isfinite(result.high) and result.low <= result.high
    one = gap_closed({0: 0.9}, {0: 0.8}, {0: 0.85})
    assert one == Estimate(pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5), 1)
    none = paired_difference({}, {})
    assert none.n == 0 and math.isnan(none.value) and math.isnan(none.low)
