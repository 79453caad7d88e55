"""Figures show every curve whole (the demo's large-batch curves were cut below 50%) and keep
their tick labels apart."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from largebatch.analysis.figures import interpolation_figure  # noqa: E402
from largebatch.report.data import Group, Run  # noqa: E402
from largebatch.report.figures import curves_figure  # noqa: E402


def _run(train, val, seed=0):
    rows = [
        {"epoch": e + 1, "train_acc": t, "val_acc": v}
        for e, (t, v) in enumerate(zip(train, val, strict=True))
    ]
    return Run(Path(f"r{seed}"), {"train.seed": seed}, {"status": "completed"}, rows, [], {}, {})


def test_curves_show_every_point_from_epoch_1():
    small = Group("B=32", [_run([0.5, 0.8, 0.9, 0.95, 0.99] * 2, [0.5, 0.6, 0.62, 0.63, 0.64] * 2)])
    # Large batch: stays low for long (a quarter in it is still at 20%).
    large = Group(
        "B=1024",
        [_run([0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [0.1] * 5 + [0.3] * 5)],
    )
    fig = curves_figure([small, large])
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low <= 10 and high >= 99
    assert 0 <= low and high <= 101
    assert ax.get_xlim()[0] == 1 and ax.get_xlim()[1] == 10


def _overlaps(ax) -> bool:
    """Whether two y tick labels drawn inside the axis' range overlap."""
    low, high = ax.get_ylim()
    ticks = ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
    boxes = [
        t.label1.get_window_extent()
        for t in ticks
        if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high
    ]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.parametrize("low, high", [(0.9, 3), (0.3, 3), (0.05, 3), (0.01, 8), (1.5, 2.5)])
def test_interpolation_plot_tick_labels_do_not_overlap(low, high):
    alphas = [-1 + 0.125 * i for i in range(25)]

    def loss(a):
        return low * (high / low) ** min(1.0, abs(a - 0.3) / 1.7)

    record = {
        "run_dir": "runs/small",
        "run_b": "runs/large",
        "values": {
            "alpha": alphas,
            "train_loss": [loss(a) for a in alphas],
            "val_loss": [1.2 * loss(a) for a in alphas],
            "train_accuracy": [0.5] * 25,
            "val_accuracy": [0.4] * 25,
        },
    }
    fig = interpolation_figure(record)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert not _overlaps(ax)
    labelled = [t for t in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()]
    shown = [t for t in labelled if t.label1.get_text() and low <= t.get_loc() <= 1.2 * high]
    assert len(shown) >= 2  # still readable: at least two values on the axis
