import json

from largebatch.cli import main


def test_quick_demo_writes_table_plot_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert table.count("\n") == 5  # header, rule, three settings
    assert (out / "curves.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "alpha = 1e-05" in report and "## What it shows" in report
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [2, 2, 2]
    small = rows[0]
    assert small["train_acc"][0] > 95  # trained to ~100%: the paper's regime
    assert small["val_acc"][0] > 80
    # a second call reuses the finished runs instead of training again
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("(reused)") == 6
