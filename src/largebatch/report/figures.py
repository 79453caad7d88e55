"""The figures of ``largebatch report``, drawn from grouped runs and the report's rows.

- ``curves.png``: accuracy against epoch per setting, train dotted and validation solid, the mean
  over seeds with a band of ± one standard deviation (the paper's Figs. 4 and 7);
- ``batch.png``: final validation accuracy and gap against the batch size;
- ``steps_to_target.png``: updates to reach a target accuracy against the batch size, log-log,
  with the perfect-scaling line (Shallue et al.);
- ``sharpness.png``: the top Hessian eigenvalue against lr/B (Jastrzebski et al., Fig. 3) and
  against B (Keskar et al.), where runs hold ``analysis/hessian.json``.

A figure is drawn only when the runs hold what it needs (several batch sizes, Hessian records).
Matplotlib is imported on use, on the Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from largebatch.plotting import log_axis_at, plain_log_y

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from largebatch.report.data import Group

COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan")  # fmt: skip


def _palette(n: int) -> list[Any]:
    """``n`` distinguishable colours: the 10 above, or matplotlib's 20-colour map beyond 10."""
    if n <= len(COLORS):
        return list(COLORS)
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def curves_figure(groups: list[Group]) -> Figure | None:
    """Train (dotted) and validation (solid) accuracy against epoch, mean ± std over seeds."""
    drawn = [g for g in groups if g.completed]
    if not drawn:
        return None
    fig = _figure(9.5, 4.8)
    ax = fig.add_axes((0.08, 0.12, 0.58, 0.8))
    lows, highs, last_epoch, ends = [], [], 1, []
    palette = _palette(len(drawn))
    for i, g in enumerate(drawn):
        color = palette[i]
        n_epochs = min(len(r.metrics) for r in g.completed)
        epochs = [g.completed[0].metrics[e]["epoch"] for e in range(n_epochs)]
        last_epoch = max([last_epoch, *epochs])
        ends.append(epochs[-1] if epochs else 1)
        for key, style in (("train_acc", ":"), ("val_acc", "-")):
            per_epoch = [[100 * r.metrics[e][key] for r in g.completed] for e in range(n_epochs)]
            mean = [statistics.fmean(v) for v in per_epoch]
            ax.plot(
                epochs,
                mean,
                style,
                color=color,
                lw=1.6,
                label=g.label if key == "val_acc" else None,
            )
            if len(g.completed) > 1:
                std = [statistics.stdev(v) for v in per_epoch]
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, lo, hi, color=color, alpha=0.15, lw=0)
                mean = lo + hi  # the band is part of what must show
            lows.append(min(mean))
            highs.append(max(mean))
    n = sorted({len(g.completed) for g in drawn})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    ax.set(xlabel="epoch", ylabel="accuracy (%)")
    ax.set_title(f"mean over {seeds} seed(s), band ± 1 std", fontsize=10)
    # Every point of every curve (and band) shows: large-batch curves start and stay low, and
    # cutting them hides the gap the figure is about. Epochs are counted from 1.
    ax.set_ylim(max(0.0, min(lows) - 3), min(100.0, max(highs) + 3))
    ax.set_xlim(1, max(last_epoch, 2))
    if max(ends) > 4 * min(ends):  # e.g. "train longer" beside equal-epoch runs: both readable
        ax.set_xscale("log")
    else:  # whole epochs: no 1.25, 1.5 ... ticks on a short run
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.plot([], [], ":", color="k", label="train (dotted)")
    ax.plot([], [], "-", color="k", label="validation (solid)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig


def _series(groups: list[Group], rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Indices of rows per line: settings equal apart from the batch size share a line."""
    lines: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        key = {k: v for k, v in g.config.items() if k != "train.global_batch_size"}
        lines.setdefault(repr(sorted(key.items(), key=lambda kv: kv[0])), []).append(i)
    return lines


def _line_label(groups: list[Group], idx: list[int], all_lines: int) -> str:
    if all_lines == 1:
        return "all settings"

    def rest(label: str) -> str:  # the label without its batch size (the x axis)
        return ", ".join(p for p in label.split(", ") if "batch_size" not in p)

    common = {rest(groups[i].label) for i in idx}
    if len(common) == 1 and "" not in common:  # grid labels: "lr=0.01" names the whole line
        return common.pop()
    if len(idx) > 1:  # labels given per setting ("B=32", "B=512, alpha=0"): name its ends
        return f"{groups[idx[0]].label} .. {groups[idx[-1]].label}"
    return rest(groups[idx[0]].label) or groups[idx[0]].label


def batch_figure(groups: list[Group], rows: list[dict[str, Any]]) -> Figure | None:
    batches = [r["batch"] for r in rows if r["final_val_acc"]["n"]]
    if len(set(batches)) < 2:
        return None
    fig = _figure(10, 4.2)
    lines = _series(groups, rows)
    for col, (key, ylabel) in enumerate(
        (("final_val_acc", "final validation accuracy (%)"), ("gap", "gap: train − val (points)"))
    ):
        ax = fig.add_subplot(1, 2, col + 1)
        for j, idx in enumerate(lines.values()):
            pts = sorted((rows[i]["batch"], rows[i][key]) for i in idx if rows[i][key]["n"])
            if not pts:
                continue
            xs = [b for b, _ in pts]
            ys = [d["mean"] for _, d in pts]
            err = [0 if math.isnan(d["std"]) else d["std"] for _, d in pts]
            label = _line_label(groups, idx, len(lines))
            ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color=COLORS[j % 10], label=label)
        log_axis_at(ax, "x", batches)
        ax.set(xlabel="batch size B (examples per update)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def steps_figure(groups: list[Group], steps: list[dict[str, Any]], target: float) -> Figure | None:
    reached = [s for s in steps if s["steps"]["n"]]
    if len({s["batch"] for s in reached}) < 2:
        return None
    fig = _figure(6.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    lines = _series(groups, steps)
    ys_all: list[float] = []
    ideal_named = False
    for j, idx in enumerate(lines.values()):
        pts = sorted((steps[i]["batch"], steps[i]["steps"]) for i in idx if steps[i]["steps"]["n"])
        if not pts:
            continue
        xs = [b for b, _ in pts]
        ys = [d["mean"] for _, d in pts]
        ys_all += ys
        color = COLORS[j % 10]
        ax.plot(xs, ys, "o-", color=color, label=_line_label(groups, idx, len(lines)))
        if len(xs) < 2:  # one batch size: no scaling line to draw (nor to name in the legend)
            continue
        ideal = [ys[0] * xs[0] / b for b in xs]
        ys_all += ideal
        ax.plot(xs, ideal, "--", color=color, alpha=0.5, lw=1,
                label=None if ideal_named else "perfect scaling (steps ∝ 1/B)")  # fmt: skip
        ideal_named = True
    log_axis_at(ax, "x", [s["batch"] for s in reached])
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    ax.set_ylim(min(ys_all) / 1.5, max(ys_all) * 1.5)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="batch size B (examples per update)", ylabel="updates to reach the target")
    ax.set_title(f"steps to {100 * target:.1f}% validation accuracy (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def sharpness_figure(groups: list[Group], hessian: list[dict[str, Any]]) -> Figure | None:
    if not hessian:
        return None
    fig = _figure(10, 4.2)
    for col, (key, xlabel) in enumerate(
        (("lr_over_b", "lr / B (learning rate per example)"), ("batch", "batch size B"))
    ):
        ax = fig.add_subplot(1, 2, col + 1)
        for h in hessian:
            ax.scatter([h[key]] * len(h["per_run"]), h["per_run"], s=14, color="tab:gray")
        xs = [h[key] for h in hessian]
        ys = [h["top_eigenvalue"]["mean"] for h in hessian]
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3, label="mean over seeds")
        plain_log_y(ax)  # 0.9, 20, 80: not 10^0, 10^1
        if col == 0:
            ax.set_xscale("log")
        else:
            log_axis_at(ax, "x", xs)
        ax.set(xlabel=xlabel, ylabel="top Hessian eigenvalue")
        ax.grid(alpha=0.3, which="both")
    fig.axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("sharpness of the solutions: grey = one run", fontsize=10)
    fig.tight_layout()
    return fig


def surfaces_figure(groups: list[Group]) -> Figure | None:
    """Li et al.'s Fig. 3 form: each setting's 1-D filter-normalised loss curve
    (``analysis/surface_1d.json``) in its own panel, side by side, on one loss axis; grey lines
    are single runs, the black line their mean."""
    drawn = [(g, [r.surface for r in g.completed if r.surface]) for g in groups]
    drawn = [(g, curves) for g, curves in drawn if curves]
    if not drawn:
        return None
    fig = _figure(2.6 * len(drawn) + 0.6, 3.2)
    axes = fig.subplots(1, len(drawn), sharey=True, squeeze=False)[0]
    for ax, (g, curves) in zip(axes, drawn, strict=True):
        coords = curves[0]["values"]["coords"]
        same = [c["values"]["loss"] for c in curves if c["values"]["coords"] == coords]
        for loss in same:
            ax.plot(coords, loss, color="tab:gray", lw=0.8, alpha=0.7)
        mean = [statistics.fmean(v) for v in zip(*same, strict=True)]
        ax.plot(coords, mean, color="k", lw=1.6)
        ax.set_title(g.label.replace(", ", "\n"), fontsize=8)  # one key a line: no run-ins
        ax.set_xlabel("alpha (filter-normalised direction)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss")
    axes[0].set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    # plain numbers (0.6, 1, 2) at 1-2-5 steps, not 6 x 10^-1; minor ticks unlabelled
    axes[0].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].yaxis.set_major_formatter(ScalarFormatter())
    axes[0].yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    return fig


def draw_all(
    groups: list[Group],
    rows: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    hessian: list[dict[str, Any]],
    target: float,
    out: Path,
) -> list[tuple[str, str]]:
    """Draw every figure the runs allow into ``out``; return ``(file name, caption)`` pairs."""
    made = []
    for name, caption, fig in (
        ("curves.png", "accuracy per epoch: train dotted, validation solid", curves_figure(groups)),
        ("batch.png", "validation accuracy and gap against batch size", batch_figure(groups, rows)),
        (
            "steps_to_target.png",
            f"updates to {100 * target:.1f}% validation accuracy against batch size",
            steps_figure(groups, steps, target) if steps else None,
        ),
        (
            "sharpness.png",
            "top Hessian eigenvalue against lr/B and B",
            sharpness_figure(groups, hessian),
        ),
        (
            "surfaces.png",
            "1-D filter-normalised loss curves, side by side (Li et al., Fig. 3)",
            surfaces_figure(groups),
        ),
    ):
        if fig is not None:
            fig.savefig(out / name, dpi=110)
            made.append((name, caption))
    return made


def not_drawn(
    groups: list[Group],
    steps: list[dict[str, Any]],
    target: float,
    target_asked: bool,
    made: list[str],
) -> list[str]:
    """One line for each figure the user asked for (``--target``; ``analyze surface``) that is
    not drawn, or drawn without some settings, saying why; empty when nothing is left out."""
    from largebatch.report.data import default_target, evaluations

    notes = []
    if target_asked and steps:
        pct = f"{100 * target:.1f}%"
        reached = [s for s in steps if s["steps"]["n"]]
        missed = [s["setting"] for s in steps if not s["steps"]["n"]]
        never = f"; never reached by: {', '.join(missed)}" if missed else ""
        if "steps_to_target.png" not in made:
            bests = [
                (max(a for _, a in evaluations(r)), g.label)
                for g in groups
                for r in g.completed
                if evaluations(r)
            ]
            if not bests:
                notes.append("steps_to_target.png not drawn: no run completed")
            elif not reached:
                best, label = max(bests)
                notes.append(
                    f"steps_to_target.png not drawn: no run reached --target {pct} validation "
                    f"accuracy (the best any run reached: {100 * best:.1f}%, {label}); give a "
                    "lower --target, or leave it out for the best accuracy every run reaches "
                    f"({100 * default_target(groups):.1f}%)"
                )
            else:
                batches = sorted({s["batch"] for s in reached})
                notes.append(
                    f"steps_to_target.png not drawn: only runs at B={batches[0]} reached {pct} "
                    f"validation accuracy (the figure needs two batch sizes){never}"
                )
        elif missed:
            notes.append(
                f"steps_to_target.png leaves out {', '.join(missed)}: no run of theirs reached "
                f"--target {pct} validation accuracy"
            )
    only_2d = [
        r
        for g in groups
        for r in g.completed
        if r.surface is None and (r.path / "analysis" / "surface_2d.json").is_file()
    ]
    if only_2d:
        how = "leaves out" if "surfaces.png" in made else "not drawn:"
        notes.append(
            f"surfaces.png {how} {len(only_2d)} run(s) that hold only a 2-D surface "
            "(analysis/surface_2d.json): it draws 1-D curves (largebatch analyze surface RUN "
            "--dim 1); the 2-D ones are in each RUN/analysis/surface_2d.png"
        )
    return notes
