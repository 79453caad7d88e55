"""``largebatch demo``: the demo's sweep preset plus the report, at test size (2 epochs)."""

import json

from largebatch.experiments.demo import run_demo, spec_path
from largebatch.experiments.sweep import load_spec

TINY = ["train.epochs=2", "data.num_samples=1500"]  # 1200 train: 2 batches of 512


LABELS = [
    "B=32",
    "B=512, linear LR",
    "B=512, linear LR + noise",
    "B=512, linear LR + label smoothing 0.1",
]


def test_demo_preset_is_the_four_settings_with_ten_seeds():
    spec = load_spec(spec_path())
    assert [r.label for r in spec.runs[::10]] == LABELS
    assert len(spec.runs) == 40  # --seeds default 10, as the CLI's help says
    assert len(load_spec(spec_path(), quick=True).runs) == 8


def test_demo_writes_table_curves_and_report_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo(quick=True, out=out, seeds=1, overrides=TINY) == 0
    table = (out / "table.md").read_text()
    assert table.count("| B=512, linear LR + label smoothing 0.1 |") == 2  # results and gap tables
    assert (out / "curves.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "alpha = 1e-05" in report and "## What it shows" in report
    assert "## Closing the gap: B=32 vs B=512, linear LR" in report
    # one seed: the verdict refuses to judge rather than print an interval of one point
    assert report.count("1 seed(s): too few for a bootstrap interval") == 2
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["final_val_acc"]["n"] for r in rows] == [1, 1, 1, 1]
    capsys.readouterr()
    # a second call reuses the finished runs instead of training again
    assert run_demo(quick=True, out=out, seeds=1, overrides=TINY) == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out


def test_verdicts_follow_the_paired_interval():
    from largebatch.experiments.demo import _judge
    from largebatch.report.gap import Estimate

    assert _judge(Estimate(0.4, 0.2, 0.6, 10)) == "closes part of the gap"
    assert _judge(Estimate(0.95, 0.6, 1.3, 10)) == "closes the whole gap"
    assert _judge(Estimate(0.95, 0.3, 1.3, 10)) == "closes part of the gap"
    assert (
        _judge(Estimate(0.1, -0.2, 0.4, 10))
        == "no effect distinguishable from seed-to-seed variation"
    )
    assert _judge(Estimate(-2.0, -3.0, -1.0, 10)) == "makes the gap wider"
    assert "too few" in _judge(Estimate(0.5, 0.2, 0.9, 2))
