"""The figures of ``largebatch analyze``, drawn from the JSON records the commands write.

Each function takes the record a command saves (``RUN/analysis/<name>.json``, loaded as a dict)
and returns a matplotlib ``Figure`` drawn on the Agg canvas: no pyplot, no display, no global
state. Since they read only the record, a figure can be redrawn later from its JSON::

    record = json.load(open("RUN/analysis/interpolate.json"))
    interpolation_figure(record).savefig("fig6.png")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from largebatch.plotting import plain_log_y

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # imported on use: it adds 0.4 s to every CLI start

    return Figure(figsize=(width, height))


def hessian_figure(record: dict[str, Any]) -> Figure:
    """Top eigenvalues; the top estimate against Hessian-vector products; the SLQ density."""
    values = record["values"]
    density = values.get("density")
    panels = 3 if density else 2
    fig = new_figure(4.2 * panels, 3.6)
    eigenvalues = values["eigenvalues"]
    ax = fig.add_subplot(1, panels, 1)
    ranks = list(range(1, len(eigenvalues) + 1))
    ax.plot(ranks, eigenvalues, "o-")
    ax.set_xticks(ranks if len(ranks) <= 10 else ranks[:: max(1, len(ranks) // 10)])
    ax.set_xlim(0.5, len(ranks) + 0.5)
    ax.set(xlabel="rank", ylabel="eigenvalue", title=f"top-{len(eigenvalues)} Hessian eigenvalues")
    for r, v in zip(ranks, eigenvalues, strict=True):
        if len(ranks) <= 5:  # a few points: their values, readable at a glance
            ax.annotate(f"{v:.4g}", (r, v), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax = fig.add_subplot(1, panels, 2)
    history = values["eigen_history"]
    ax.plot(range(1, len(history) + 1), history)
    ax.set(xlabel="Hessian-vector products", ylabel="top estimate", title=record["method"])
    if density:
        ax = fig.add_subplot(1, panels, 3)
        ax.semilogy(density["grid"], [max(d, 1e-12) for d in density["density"]])
        ax.set(xlabel="eigenvalue", ylabel="density", title="spectral density (SLQ)")
    fig.tight_layout()
    return fig


def sharpness_figure(record: dict[str, Any]) -> Figure:
    """The loss along the segment from the minimum to the worst perturbation found."""
    values, settings = record["values"], record["settings"]
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(values["segment_t"], values["segment_loss"], "-")
    ax.plot([0, 1], [values["loss"], values["max_loss"]], "o")
    p = settings.get("subspace_dim")
    space = "full space" if p is None else f"{p}-D subspace"
    ax.set(
        xlabel="t  (theta + t y*, y* = worst perturbation found)",
        ylabel="training loss",
        title=f"eps-sharpness {values['sharpness']:.3g} (eps={settings['epsilon']}, {space})",
    )
    fig.tight_layout()
    return fig


def interpolation_figure(record: dict[str, Any]) -> Figure:
    """Like the paper's Fig. 6: loss on a log scale (left), accuracy (right); train dotted,
    validation solid."""
    values = record["values"]
    alphas = values["alpha"]
    fig = new_figure(6.2, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(alphas, values["train_loss"], ":", color="tab:blue")
    ax.semilogy(alphas, values["val_loss"], "-", color="tab:blue")
    name_a, name_b = Path(record["run_dir"]).name, Path(record["run_b"]).name
    ax.set_xlabel(f"alpha  (0: {name_a}, 1: {name_b})")
    loss = str(record.get("loss", "cross_entropy")).replace("_", "-")
    ax.set_ylabel(f"{loss} (log scale)", color="tab:blue")
    plain_log_y(ax)  # not 2.3x10^0 on a short log axis
    acc = ax.twinx()
    acc.plot(alphas, [100 * a for a in values["train_accuracy"]], ":", color="tab:red")
    acc.plot(alphas, [100 * a for a in values["val_accuracy"]], "-", color="tab:red")
    acc.set_ylabel("accuracy (%)", color="tab:red")
    ax.set_title(
        "theta(a) = (1 - a) theta_A + a theta_B  (train dotted, validation solid)", fontsize=9
    )
    fig.tight_layout()
    return fig


def surface_figure(record: dict[str, Any]) -> Figure:
    """A line plot (1-D) or a contour plot of log10 loss (2-D)."""
    values = record["values"]
    coords, loss = values["coords"], values["loss"]
    dim = record["settings"]["dim"]
    fig = new_figure(5.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    if dim == 1:
        ax.plot(coords, loss, "-o", markersize=3)
        ax.set(xlabel="step along a filter-normalised direction", ylabel="training loss")
    else:
        # loss[i][j] is at (coords[i], coords[j]); contour wants rows along the second axis.
        grid = [
            [math.log10(max(loss[i][j], 1e-30)) for i in range(len(coords))]
            for j in range(len(coords))
        ]
        contour = ax.contour(coords, coords, grid, levels=20)
        fig.colorbar(contour, ax=ax, label="log10 training loss")
        ax.plot([0], [0], "k+")
        ax.set(xlabel="direction 1", ylabel="direction 2")
    ax.set_title(f"{dim}-D loss surface (Li et al.), {record['num_samples']} samples")
    fig.tight_layout()
    return fig


def noise_scale_figure(record: dict[str, Any]) -> Figure:
    """Mini-batch noise per entry against the batch size, beside the injected noise."""
    values = record["values"]
    per_example = values["trace_sigma"] / record["num_params"]
    fig = new_figure(5.6, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    sizes = [2**i for i in range(17)]
    ax.loglog(
        sizes, [per_example / b for b in sizes], "-", label="mini-batch noise tr(Sigma)/(P B)"
    )
    ax.loglog(
        [values["batch_size"]],
        [values["minibatch_variance_per_entry"]],
        "o",
        label=f"run's batch B={values['batch_size']}",
    )
    if values["injected_variance_per_entry"] > 0:
        ax.axhline(
            values["injected_variance_per_entry"],
            color="tab:red",
            label=f"injected sigma_t^2 at t={values['step']}",
        )
    b_simple = values.get("b_simple")
    if b_simple is not None and b_simple > 0:
        ax.axvline(b_simple, color="gray", ls="--", label=f"B_simple = {b_simple:.3g}")
    ax.set(xlabel="batch size B", ylabel="variance per gradient entry")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
