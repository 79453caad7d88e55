"""``largebatch demo``: the demo's sweep preset plus the report, at test size (2 epochs)."""

import json

from largebatch.demo import run_demo, spec_path
from largebatch.sweep import load_spec

TINY = ["train.epochs=2", "data.num_samples=1500"]  # 1200 train: 2 batches of 512


def test_demo_preset_is_the_three_settings_with_ten_seeds():
    spec = load_spec(spec_path())
    assert [r.label for r in spec.runs[::10]] == [
        "B=32",
        "B=512, linear LR",
        "B=512, linear LR + noise",
    ]
    assert len(spec.runs) == 30  # --seeds default 10, as the CLI's help says
    assert len(load_spec(spec_path(), quick=True).runs) == 6


def test_demo_writes_table_curves_and_report_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo(quick=True, out=out, seeds=1, overrides=TINY) == 0
    table = (out / "table.md").read_text()
    assert table.count("\n") == 5  # header, rule, three settings
    assert (out / "curves.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "alpha = 1e-05" in report and "## What it shows" in report
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["final_val_acc"]["n"] for r in rows] == [1, 1, 1]
    capsys.readouterr()
    # a second call reuses the finished runs instead of training again
    assert run_demo(quick=True, out=out, seeds=1, overrides=TINY) == 0
    assert "3 already finished, 0 to run" in capsys.readouterr().out
