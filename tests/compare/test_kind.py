"""What kind of gap a large batch has: closed forms, the decision rule, and the report section."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from largebatch.cli import main
from largebatch.compare import kind as kind_module
from largebatch.compare.kind import diagnose, diagnose_groups, format_diagnosis
from largebatch.config import config_from_dict, config_to_dict
from largebatch.report.data import find_runs, group_runs

# {seed: (train_acc, val_acc)}: the small batch, and large batches made to have each kind.
SMALL = {0: (1.00, 0.95), 1: (1.00, 0.94), 2: (0.99, 0.95), 3: (0.99, 0.96)}
LARGE = {
    # train 9.5 points lower, val 9 lower: F = 9.5, G = -0.5
    "fit": {0: (0.90, 0.86), 1: (0.91, 0.85), 2: (0.89, 0.86), 3: (0.90, 0.87)},
    # train as high, val 2 lower: F = 0, G = 2
    "generalization": {0: (1.00, 0.93), 1: (1.00, 0.92), 2: (0.99, 0.93), 3: (0.99, 0.94)},
    # train 5 lower, val 7 lower: F = 5, G = 2, threshold max(0.5, 7 / 4) = 1.75
    "both": {0: (0.95, 0.88), 1: (0.95, 0.87), 2: (0.94, 0.88), 3: (0.94, 0.89)},
    # seed noise only: val differences -1, +1, +1, -1, train +1, 0, -1, 0
    "none": {0: (0.99, 0.96), 1: (1.00, 0.93), 2: (1.00, 0.94), 3: (0.99, 0.97)},
}
EXPECTED = {  # (D, F, G) in points, by hand from the dicts above
    "fit": (9.0, 9.5, -0.5),
    "generalization": (2.0, 0.0, 2.0),
    "both": (7.0, 5.0, 2.0),
    "none": (0.0, 0.0, 0.0),
}
BATCH = {"small": 32, "none": 64, "generalization": 256, "fit": 512, "both": 1024}


@pytest.mark.parametrize("kind", list(LARGE))
def test_each_kind_from_dicts_made_to_have_it(kind):
    d = diagnose(SMALL, LARGE[kind])
    assert d.kind == kind and d.n == 4
    D, F, G = EXPECTED[kind]
    assert d.val_gap.value == pytest.approx(D, abs=1e-9)
    assert d.fit_gap.value == pytest.approx(F, abs=1e-9)
    assert d.generalization_gap.value == pytest.approx(G, abs=1e-9)
    assert d.train_small == pytest.approx(99.5)
    assert d.train_large == pytest.approx(100 * np.mean([t for t, _ in LARGE[kind].values()]))
    expected = {
        "fit": ("optimisation",),
        "generalization": ("regulariser",),
        "both": ("optimisation", "regulariser"),
        "none": (),
    }
    assert d.candidates() == expected[kind]


def test_val_gap_is_fit_plus_generalization_gap_and_the_hand_computed_means():
    rng = np.random.default_rng(1)
    small = {s: (float(rng.uniform(0.9, 1)), float(rng.uniform(0.8, 0.95))) for s in range(10)}
    large = {s: (float(rng.uniform(0.8, 1)), float(rng.uniform(0.7, 0.95))) for s in range(10)}
    d = diagnose(small, large)
    assert d.val_gap.value == pytest.approx(d.fit_gap.value + d.generalization_gap.value, abs=1e-12)
    ts, vs = np.array([small[s] for s in range(10)]).T * 100
    tl, vl = np.array([large[s] for s in range(10)]).T * 100
    assert d.val_gap.value == pytest.approx(np.mean(vs - vl))
    assert d.fit_gap.value == pytest.approx(np.mean(ts - tl))
    assert d.generalization_gap.value == pytest.approx(np.mean((tl - vl) - (ts - vs)))
    # one set of resamples for all three: D's interval lies where F + G's can put it
    assert d.val_gap.low < d.val_gap.value < d.val_gap.high


def test_fit_interval_reflects_the_seeds():
    d = diagnose(SMALL, LARGE["fit"])
    # per-seed fit gaps 10, 9, 10, 9; per-seed val gaps all 9
    assert (d.fit_gap.low, d.fit_gap.high) == pytest.approx((9.0, 10.0))
    assert (d.val_gap.low, d.val_gap.high) == pytest.approx((9.0, 9.0))
    assert "fit gap 9.50 [9.00, 10.00] ≥ 2.25" in d.reason
    assert "generalization gap -0.50" in d.reason and "interval not above 0" in d.reason


def test_a_tiny_fit_difference_does_not_count():
    """Train 100 vs 99.9 (a tenth of a point, the same at every seed: its interval is above 0)
    is below ``min_points``: the gap is a generalization gap, not both."""
    small = {s: (1.0, 0.95 + 0.01 * (s % 2)) for s in range(4)}
    large = {s: (0.999, 0.93 + 0.01 * (s % 2)) for s in range(4)}
    d = diagnose(small, large)
    assert d.fit_gap.value == pytest.approx(0.1) and d.fit_gap.low > 0
    assert d.kind == "generalization"
    assert "fit gap 0.10 [0.10, 0.10] < 0.50" in d.reason
    assert "(threshold max(0.50, 0.25 × val gap 2.00) = 0.50 points)" in d.reason


def test_min_points_is_the_threshold():
    """F = 0.1, G = 0.2 (D = 0.3, tight intervals): nothing counts at the default 0.5 points;
    with min_points = 0.05 the threshold is a quarter of D (0.075) and both count."""
    small = {s: (1.0, 0.95 + 0.01 * (s % 2)) for s in range(4)}
    large = {s: (0.999, 0.947 + 0.01 * (s % 2)) for s in range(4)}
    d = diagnose(small, large)
    assert d.kind == "none" and d.reason.startswith("neither part counts")
    low = diagnose(small, large, min_points=0.05)
    assert low.kind == "both" and "= 0.08 points" in low.reason


def test_a_part_under_a_quarter_of_the_gap_does_not_count():
    """F = 2 points with a tight interval, but D = 10: 2 < 10 / 4, so only G counts."""
    small = {s: (1.0, 0.95 - 0.01 * s) for s in range(4)}
    large = {s: (0.98, 0.85 - 0.01 * s) for s in range(4)}
    d = diagnose(small, large)
    assert (d.val_gap.value, d.fit_gap.value) == pytest.approx((10.0, 2.0))
    assert d.kind == "generalization"
    assert "fit gap 2.00 [2.00, 2.00] < 2.50" in d.reason


def test_no_gap_within_seed_noise_is_none_and_says_so():
    d = diagnose(SMALL, LARGE["none"])
    assert d.val_gap.low < 0 < d.val_gap.high
    assert d.kind == "none" and "no gap distinguishable from seed noise" in d.reason
    text = format_diagnosis(d)
    assert "**none**" in text and "Try first: nothing" in text


def test_a_large_batch_that_validates_better_has_no_gap():
    small = {s: (1.0, 0.90 + 0.01 * s) for s in range(4)}
    large = {s: (1.0, 0.92 + 0.01 * s) for s in range(4)}
    d = diagnose(small, large)
    assert d.kind == "none" and d.val_gap.high < 0 and "validates better" in d.reason


def test_one_seed_uses_the_value_alone():
    d = diagnose({0: (1.0, 0.95)}, {0: (0.9, 0.86)})
    assert d.n == 1 and d.kind == "fit"
    assert d.fit_gap.value == pytest.approx(10.0) and d.val_gap.value == pytest.approx(9.0)
    assert "(1 seed: no interval)" in d.reason and "fit gap 10.00 (1 seed) ≥ 2.25" in d.reason
    gen = diagnose({0: (1.0, 0.95)}, {0: (1.0, 0.93)})
    assert gen.kind == "generalization" and "(1 seed: no interval)" in gen.reason
    tiny = diagnose({0: (1.0, 0.95)}, {0: (1.0, 0.948)})  # 0.2 points < min_points
    assert tiny.kind == "none" and "(1 seed: no interval)" in tiny.reason


def test_only_seeds_in_both_count_and_none_in_common_is_none():
    small = {0: (1.0, 0.95), 1: (1.0, 0.95), 2: (1.0, 0.95)}
    large = {1: (0.9, 0.86), 2: (0.9, 0.86), 3: (0.5, 0.5)}
    d = diagnose(small, large)
    assert d.n == 2 and d.fit_gap.value == pytest.approx(10.0)
    empty = diagnose({0: (1.0, 0.9)}, {1: (1.0, 0.8)})
    assert empty.n == 0 and empty.kind == "none" and "–" in format_diagnosis(empty)


def test_percentages_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        diagnose({0: (100.0, 95.0)}, {0: (90.0, 86.0)})


def test_format_names_the_kind_the_numbers_and_what_to_try():
    text = format_diagnosis(diagnose(SMALL, LARGE["both"]))
    assert "Kind of gap: **both**" in text
    assert "val gap D = 7.00 [" in text and "F = 5.00 [5.00, 5.00]" in text
    assert "G = D − F = 2.00 [" in text
    assert "small 99.50%, large 94.50%" in text
    assert text.index("optimisation (") < text.index("a regulariser (")
    assert "\n" not in text  # one paragraph


def test_docstring_example_runs():
    result = doctest.testmod(kind_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------------------------
# From run directories, through `largebatch report DIR --gap SMALL LARGE`


def make_run(folder: Path, batch: int, seed: int, train: float, val: float) -> None:
    """A completed two-epoch run directory whose last epoch has ``train`` and ``val``."""
    folder.mkdir(parents=True)
    cfg = config_from_dict({"train": {"global_batch_size": batch, "seed": seed}})
    (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    rows = [
        {
            "epoch": e,
            "step": e * (1024 // batch),
            "train_acc": acc_t,
            "train_loss": 1.0 / e,
            "val_acc": acc_v,
            "val_loss": 1.2 / e,
            "gap": acc_t - acc_v,
            "epoch_time_s": 1.0,
        }
        for e, acc_t, acc_v in ((1, train - 0.1, val - 0.1), (2, train, val))
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": "completed", "final": rows[-1], "wall_time_s": 2.0}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    settings = {"small": SMALL, **LARGE}
    for name, accs in settings.items():
        for seed, (train, val) in accs.items():
            make_run(root / f"{name}-s{seed}", BATCH[name], seed, train, val)
    return root


def test_diagnose_groups_reads_the_last_epoch_of_completed_runs(runs_dir):
    groups = {g.config["train.global_batch_size"]: g for g in group_runs(find_runs([runs_dir]))}
    d = diagnose_groups(groups[BATCH["small"]], groups[BATCH["fit"]])
    direct = diagnose(SMALL, LARGE["fit"])
    assert d == direct and d.kind == "fit"


@pytest.mark.parametrize("kind", list(LARGE))
def test_report_says_what_kind_of_gap(runs_dir, tmp_path, capsys, kind):
    out = tmp_path / "rep"
    small, large = f"global_batch_size={BATCH['small']}", f"global_batch_size={BATCH[kind]}"
    assert main(["report", str(runs_dir), "--out", str(out), "--gap", small, large]) == 0
    report = (out / "report.md").read_text()
    d = diagnose(SMALL, LARGE[kind])
    D, F, G = EXPECTED[kind]
    assert "### What kind of gap" in report
    # the section comes inside the gap section, before the gap table
    section = report.index("### What kind of gap")
    assert report.index("## Closing the gap") < section < report.index("| setting | n | val acc")
    paragraph = report[section:].split("\n\n")[1]
    assert paragraph == format_diagnosis(d)
    assert f"Kind of gap: **{kind}" in paragraph
    assert f"val gap D = {D:.2f}".replace("-0.00", "0.00") in paragraph
    assert f"F = {F:.2f}" in paragraph and f"G = D − F = {G:.2f}" in paragraph
    assert "small 99.50%" in paragraph
    printed = capsys.readouterr().out
    assert format_diagnosis(d) in printed  # the same text in what `largebatch report` prints
