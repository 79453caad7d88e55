"""The paired gap statistics: closed forms, the pairing, the bootstrap interval."""

import numpy as np
import pytest

from largebatch.report.gap import gap_closed, paired_difference


def test_fraction_closed_is_the_ratio_of_mean_paired_differences():
    small = {s: 0.95 for s in range(6)}
    large = {s: 0.92 for s in range(6)}
    fix = {s: 0.92 + 0.03 * f for s, f in enumerate([0.2, 0.4, 0.6, 0.4, 0.6, 0.2])}
    result = gap_closed(small, large, fix)
    assert result.value == pytest.approx(0.4)
    assert result.low <= 0.4 <= result.high and result.n == 6
    assert result.high - result.low > 0.05  # six seeds with spread: not a point


def test_pairing_removes_what_a_seed_does_to_every_setting():
    """A per-seed offset shared by all settings (a lucky initialisation) cancels in a paired
    statistic: the interval is as narrow as without the offset, unlike an unpaired one."""
    rng = np.random.default_rng(0)
    offset = {s: float(rng.normal(0, 0.02)) for s in range(10)}
    small = {s: 0.95 + offset[s] for s in range(10)}
    large = {s: 0.92 + offset[s] for s in range(10)}
    fix = {s: 0.935 + offset[s] for s in range(10)}
    closed = gap_closed(small, large, fix)
    assert closed.value == pytest.approx(0.5)
    assert closed.high - closed.low < 1e-9  # the offset is gone entirely
    diff = paired_difference(fix, large)
    assert diff.value == pytest.approx(0.015) and diff.high - diff.low < 1e-9


def test_only_seeds_present_in_all_settings_count():
    small = {0: 0.9, 1: 0.9, 2: 0.9}
    large = {0: 0.8, 1: 0.8}
    fix = {1: 0.85, 2: 0.85, 3: 0.85}
    result = gap_closed(small, large, fix)
    assert result.n == 1 and result.value == pytest.approx(0.5)


def test_report_cli_gap_table_and_unknown_label(tmp_path, tiny_mnist1d_overrides):
    from largebatch.cli import main
    from largebatch.config import load_config
    from largebatch.engine import train

    for b in (32, 64):
        for seed in (0, 1):
            over = [*tiny_mnist1d_overrides, f"train.global_batch_size={b}", f"train.seed={seed}"]
            train(load_config(None, over), tmp_path / "runs" / f"b{b}-s{seed}")
    out = tmp_path / "rep"
    argv = ["report", str(tmp_path / "runs"), "--out", str(out)]
    labels = ["global_batch_size=32", "global_batch_size=64"]
    assert main([*argv, "--gap", *labels]) == 0
    text = (out / "report.md").read_text()
    assert "## Closing the gap" in text and "| global_batch_size=64 | 2 |" in text
    assert main([*argv, "--gap", "B=32", "nope"]) == 2


def test_format_shows_no_interval_for_one_seed_and_no_negative_zero():
    from largebatch.report.gap import Estimate

    assert Estimate(0.5, 0.5, 0.5, 1).format(100, 0) == "50 (1 seed)"
    assert Estimate(-0.001, -0.004, 0.002, 10).format(100, 0) == "0 [0, 0]"
    assert Estimate(0.5, 0.2, 0.8, 3).format() == "0.50 [0.20, 0.80]"
    assert Estimate(float("nan"), 0, 0, 0).format() == "–"
