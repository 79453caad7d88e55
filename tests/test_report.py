"""``largebatch report`` on synthetic run directories with known answers (no training)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from largebatch.cli import main
from largebatch.config import config_from_dict, config_to_dict
from largebatch.report import find_runs, group_runs, stat, steps_to_target, write_report


def make_run(
    folder: Path,
    batch: int,
    seed: int,
    val: list[float],
    evals: list[tuple[int, float]] | None = None,
    status: str = "completed",
    top_eigenvalue: float | None = None,
    lr: float = 0.1,
    threads: int = 1,
) -> Path:
    """A run directory as the engine writes it: ``val`` is the per-epoch validation accuracy."""
    folder.mkdir(parents=True)
    cfg = config_from_dict(
        {
            "train": {"global_batch_size": batch, "seed": seed, "threads": threads},
            "optim": {"lr": lr, "base_batch_size": 128},
            "noise": {"seed": seed},
        }
    )
    (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    steps_per_epoch = 1024 // batch
    rows = [
        {
            "epoch": e + 1,
            "step": (e + 1) * steps_per_epoch,
            "val_acc": v,
            "train_acc": 1.0,
            "gap": 1.0 - v,
        }  # fmt: skip
        for e, v in enumerate(val)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evals:
        text = "".join(json.dumps({"step": s, "epoch": 0, "val_loss": 1.0, "val_acc": a}) + "\n"
                       for s, a in evals)  # fmt: skip
        (folder / "evals.jsonl").write_text(text)
    summary = {"status": status, "final": rows[-1], "wall_time_s": 10.0 + seed}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "data.json").write_text(json.dumps({"scaled_lr": lr * batch / 128}))
    (folder / "env.json").write_text(
        json.dumps({"git": {"commit": "abc123def456", "dirty": False}})
    )
    if top_eigenvalue is not None:
        (folder / "analysis").mkdir()
        record = {"values": {"eigenvalues": [top_eigenvalue, top_eigenvalue / 2]}}
        (folder / "analysis" / "hessian.json").write_text(json.dumps(record))
    return folder


def test_stat_is_mean_sample_std_and_t_interval():
    s = stat([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    # t quantile 0.975 at 2 degrees of freedom: 4.3027 (scipy.stats.t.ppf; the old table said 4.303)
    assert s.ci95 == pytest.approx(4.3027 * s.std / math.sqrt(3), rel=1e-4)
    one = stat([5.0])
    assert one.n == 1 and math.isnan(one.std)


def test_steps_to_target_takes_the_first_evaluation_that_reaches_it():
    points = [(10, 0.5), (20, 0.79), (30, 0.8), (40, 0.7), (50, 0.9)]
    assert steps_to_target(points, 0.8) == 30
    assert steps_to_target(points, 0.95) is None


def test_grouping_ignores_seeds_and_threads_and_counts_failures(tmp_path):
    make_run(tmp_path / "a0", 64, 0, [0.5, 0.6])
    make_run(tmp_path / "a1", 64, 1, [0.5, 0.7], threads=2)  # threads: same setting
    make_run(tmp_path / "a2", 64, 2, [0.1], status="diverged")
    make_run(tmp_path / "b0", 256, 0, [0.4, 0.5])
    groups = group_runs(find_runs([tmp_path]))
    assert [g.label for g in groups] == ["global_batch_size=64", "global_batch_size=256"]
    assert [len(g.runs) for g in groups] == [3, 1]
    assert [len(g.completed) for g in groups] == [2, 1]


def test_steps_to_target_report_uses_evals_and_has_known_answers(tmp_path):
    # Steps to 80%: B=64 at steps 24 and 28 (evals.jsonl; epoch 2 ends at step 32),
    # B=256 at 8 (epoch 2), B=1024 never.
    make_run(tmp_path / "b64s0", 64, 0, [0.7, 0.85], evals=[(8, 0.6), (24, 0.81)])
    make_run(tmp_path / "b64s1", 64, 1, [0.7, 0.85], evals=[(8, 0.6), (24, 0.75), (28, 0.8)])
    make_run(tmp_path / "b256s0", 256, 0, [0.6, 0.82])
    make_run(tmp_path / "b1024s0", 1024, 0, [0.5, 0.6])
    result = write_report([tmp_path], tmp_path / "rep", target=0.8)
    steps = {s["batch"]: s for s in result["steps_to_target"]}
    assert steps[64]["per_run"] == [24, 28] and steps[64]["steps"]["mean"] == 26
    assert steps[64]["resolution"] == "evals.jsonl"
    assert steps[256]["per_run"] == [8]
    assert steps[1024]["per_run"] == [None] and steps[1024]["steps"]["n"] == 0
    assert "steps_to_target.png" in result["figures"]
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "abc123def4" in report and "## Steps to 80.0% validation accuracy" in report


def test_sharpness_table_and_figure_from_hessian_records(tmp_path, capsys):
    for b, lr, top in ((64, 0.1, 30.0), (256, 0.2, 10.0), (1024, 0.8, 3.0)):
        for seed in (0, 1):
            run = tmp_path / f"b{b}s{seed}"
            make_run(run, b, seed, [0.8, 0.9], top_eigenvalue=top + seed, lr=lr)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    result = json.loads((tmp_path / "rep" / "report.json").read_text())
    hess = {h["batch"]: h for h in result["hessian"]}
    assert hess[64]["top_eigenvalue"]["mean"] == pytest.approx(30.5)
    assert hess[64]["lr_over_b"] == pytest.approx(0.1 / 128)
    assert "sharpness.png" in result["figures"]
    assert "Spearman" in (tmp_path / "rep" / "report.md").read_text()
    assert "report:" in capsys.readouterr().out


def test_report_of_nothing_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_surfaces_side_by_side_from_surface_records(tmp_path):
    coords = [-1.0, 0.0, 1.0]
    for b, depth in ((64, 0.01), (1024, 0.1)):
        for seed in (0, 1):
            run = make_run(tmp_path / f"b{b}s{seed}", b, seed, [0.8, 0.9])
            (run / "analysis").mkdir()
            record = {"values": {"coords": coords, "loss": [2.0, depth * (1 + seed), 2.0]}}
            (run / "analysis" / "surface_1d.json").write_text(json.dumps(record))
    make_run(tmp_path / "b256s0", 256, 0, [0.8, 0.9])  # no surface: no panel
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    result = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert "surfaces.png" in result["figures"]
    from largebatch.report.data import find_runs, group_runs
    from largebatch.report.figures import surfaces_figure

    fig = surfaces_figure(group_runs(find_runs([tmp_path])))
    assert len(fig.axes) == 2  # one panel per setting that has surfaces
    means = {ax.get_title(): list(ax.lines[-1].get_ydata()) for ax in fig.axes}
    assert means == {
        "global_batch_size=64": pytest.approx([2.0, 0.015, 2.0]),
        "global_batch_size=1024": pytest.approx([2.0, 0.15, 2.0]),
    }
    fig.canvas.draw()  # the loss axis reads as plain numbers (0.5, 1.0), not 5 x 10^-1
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert labels and not any("10^" in t or "times" in t for t in labels), labels


def test_a_grid_line_is_named_by_what_it_holds_fixed():
    from largebatch.report.data import Group
    from largebatch.report.figures import _line_label

    grid = [
        Group(f"lr={lr}, global_batch_size={b}", [], {}) for lr in (0.01, 0.03) for b in (64, 1024)
    ]
    assert _line_label(grid, [0, 1], 2) == "lr=0.01"  # not "lr=0.01, ... .. lr=0.01, ..."
    assert _line_label(grid, [2, 3], 2) == "lr=0.03"
    given = [Group("B=32", [], {}), Group("B=512, alpha=0", [], {}), Group("B=512, noise", [], {})]
    assert _line_label(given, [0, 1], 2) == "B=32 .. B=512, alpha=0"  # hand labels: both ends
    assert _line_label(given, [2], 2) == "B=512, noise"
    assert _line_label(grid, [0, 1, 2, 3], 1) == "all settings"


def test_perfect_scaling_is_named_only_where_a_line_draws_it(tmp_path):
    from largebatch.report.data import find_runs, group_runs, steps_rows
    from largebatch.report.figures import steps_figure

    def legend(folder):
        groups = group_runs(find_runs([folder]))
        fig = steps_figure(groups, steps_rows(groups, 0.8), 0.8)
        return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]

    # one point per line (the lr differs with B, as in you_lars): no scaling line to name
    make_run(tmp_path / "a" / "b64", 64, 0, [0.7, 0.85], lr=0.1)
    make_run(tmp_path / "a" / "b256", 256, 0, [0.6, 0.82], lr=0.2)
    assert not any("perfect scaling" in t for t in legend(tmp_path / "a"))
    make_run(tmp_path / "b" / "b64", 64, 0, [0.7, 0.85])
    make_run(tmp_path / "b" / "b256", 256, 0, [0.6, 0.82])
    assert sum("perfect scaling" in t for t in legend(tmp_path / "b")) == 1
