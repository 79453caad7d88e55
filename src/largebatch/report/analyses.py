"""What ``largebatch analyze`` left in the runs, in the report: epsilon-sharpness and the
parametric (interpolation) plot (Keskar et al.'s Table and Fig. 3 forms).

- ``RUN/analysis/sharpness.json`` (``largebatch analyze sharpness``, or a sweep's
  ``analyze: ["sharpness"]``): a table of the epsilon-sharpness per setting (mean ± std over its
  completed runs, per epsilon) and ``eps_sharpness.png``, the sharpness against the batch size.
- ``SWEEP/interpolate/seed=S/interpolate.json`` (a sweep's ``interpolate: [A, B]``) and
  ``RUN/analysis/interpolate.json`` (``largebatch analyze interpolate RUN_A RUN_B`` by hand):
  ``interpolation.png``, the loss and accuracy along ``(1 - a) theta_A + a theta_B``, one panel
  per pair of settings, one thin line per seed and their mean.

Everything here reads files the analyses wrote; nothing is computed on a model.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from largebatch import rundir
from largebatch.plotting import log_axis_at, plain_log_y
from largebatch.report.data import Group, Run, stat

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SHARPNESS_FILE = "eps_sharpness.png"
INTERPOLATION_FILE = "interpolation.png"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = rundir.read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("values"), dict) else None


def _stat_dict(values: list[float]) -> dict[str, float]:
    s = stat(values)
    return {"mean": s.mean, "std": s.std, "n": s.n, "ci95": s.ci95}


def sharpness_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """Per setting and epsilon: the epsilon-sharpness of its completed runs (``per_run``) and
    its statistics, and the training loss at the minimum."""
    rows = []
    for g in groups:
        by_eps: dict[tuple[float, Any], list[dict[str, Any]]] = {}
        for r in g.completed:
            record = _read(r.path / "analysis" / "sharpness.json")
            if record is None or "sharpness" not in record["values"]:
                continue
            settings = record.get("settings") or {}
            key = (settings.get("epsilon"), settings.get("subspace_dim"))
            by_eps.setdefault(key, []).append(record)
        for (eps, dim), records in by_eps.items():
            values = [float(x["values"]["sharpness"]) for x in records]
            rows.append(
                {
                    "setting": g.label,
                    "batch": g.config.get("train.global_batch_size"),
                    "epsilon": eps,
                    "subspace_dim": dim,
                    "sharpness": _stat_dict(values),
                    "loss": _stat_dict([float(x["values"]["loss"]) for x in records]),
                    "per_run": values,
                }
            )
    return rows


def _candidate_files(dirs: list[Path], runs: list[Run]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        found += sorted((d / "interpolate").glob("seed=*/interpolate.json"))
        found += sorted(d.glob("interpolate.json"))  # a folder given as --out by hand
    found += [r.path / "analysis" / "interpolate.json" for r in runs]
    unique: dict[Path, Path] = {}
    for p in found:
        if p.is_file():
            unique.setdefault(p.resolve(), p)
    return list(unique.values())


def interpolation_sets(
    dirs: list[str | Path], runs: list[Run], groups: list[Group]
) -> list[dict[str, Any]]:
    """The parametric plots the runs' analyses hold, grouped by the pair of settings they join:
    ``{"a": label, "b": label, "loss": name, "curves": [values, ...], "seeds": [...],
    "files": [...]}`` (``loss``: the loss the curves are of, as the analysis recorded it).

    A record's ends (``run_dir``, ``run_b``) are matched to the runs read by path, else by the run
    folder's name (a sweep stores paths as given on its command line)."""
    label_of: dict[Path, str] = {}
    seed_of: dict[Path, int] = {}
    by_name: dict[str, list[Run]] = {}
    for g in groups:
        for r in g.runs:
            label_of[r.path.resolve()] = g.label
            seed_of[r.path.resolve()] = r.seed
            by_name.setdefault(r.path.name, []).append(r)

    def find(text: Any) -> tuple[str, int | None]:
        path = Path(str(text))
        if path.resolve() in label_of:
            return label_of[path.resolve()], seed_of[path.resolve()]
        same = by_name.get(path.name, [])
        if len(same) == 1:
            run = same[0].path.resolve()
            return label_of[run], seed_of[run]
        return path.name, None

    sets: dict[tuple[str, str], dict[str, Any]] = {}
    for file in _candidate_files([Path(d) for d in dirs], runs):
        record = _read(file)
        if record is None or not {"alpha", "train_loss", "val_loss"} <= set(record["values"]):
            continue
        (a, seed), (b, _) = find(record.get("run_dir")), find(record.get("run_b"))
        entry = sets.setdefault(
            (a, b),
            {"a": a, "b": b, "loss": record.get("loss", "cross_entropy"), "curves": []}
            | {"seeds": [], "files": []},
        )
        entry["curves"].append(record["values"])
        entry["seeds"].append(seed)
        entry["files"].append(str(file))
    return list(sets.values())


def sharpness_figure(rows: list[dict[str, Any]]) -> Figure | None:
    """Epsilon-sharpness against the batch size: grey = one run, blue = the mean over seeds; one
    marker per epsilon when several were measured."""
    if not rows:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.2, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    keys = list(dict.fromkeys((r["epsilon"], r["subspace_dim"]) for r in rows))
    markers = "osD^v"
    for i, key in enumerate(keys):
        mine = sorted((r for r in rows if (r["epsilon"], r["subspace_dim"]) == key),
                      key=lambda r: r["batch"])  # fmt: skip
        for r in mine:
            ax.scatter([r["batch"]] * len(r["per_run"]), r["per_run"], s=14, color="tab:gray")
        eps, dim = key
        space = "full space" if dim is None else f"{dim}-D subspace"
        ax.plot(
            [r["batch"] for r in mine],
            [r["sharpness"]["mean"] for r in mine],
            marker=markers[i % len(markers)],
            color="tab:blue",
            label=f"mean over seeds, eps {eps:g} ({space})",
        )
    log_axis_at(ax, "x", [r["batch"] for r in rows])
    every = [v for r in rows for v in r["per_run"]]
    if min(every) > 0 and max(every) / min(every) > 20:
        plain_log_y(ax)
    ax.set(xlabel="batch size B", ylabel="epsilon-sharpness")
    ax.set_title("Keskar et al.'s epsilon-sharpness of the solutions: grey = one run", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _mean(curves: list[list[float]]) -> list[float]:
    return [statistics.fmean(v) for v in zip(*curves, strict=True)]


def interpolation_figure(sets: list[dict[str, Any]]) -> Figure | None:
    """The paper's Fig. 6 / Keskar's Fig. 3 form, one panel per pair of settings: loss on a log
    scale (left, blue), accuracy (right, red); train dotted, validation solid; thin lines are
    single seeds, thick ones their mean."""
    drawn = []
    for s in sets:
        alphas = s["curves"][0]["alpha"]
        same = [c for c in s["curves"] if c["alpha"] == alphas]
        drawn.append((s, alphas, same))
    if not drawn:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.6 * len(drawn), 4.4))
    for i, (s, alphas, curves) in enumerate(drawn):
        ax = fig.add_subplot(1, len(drawn), i + 1)
        acc = ax.twinx()
        for key, style in (("train", ":"), ("val", "-")):
            losses = [c[f"{key}_loss"] for c in curves]
            accs = [[100 * a for a in c[f"{key}_accuracy"]] for c in curves]
            if len(curves) > 1:
                for loss, a in zip(losses, accs, strict=True):
                    ax.plot(alphas, loss, style, color="tab:blue", lw=0.7, alpha=0.35)
                    acc.plot(alphas, a, style, color="tab:red", lw=0.7, alpha=0.35)
            ax.plot(alphas, _mean(losses), style, color="tab:blue", lw=1.8)
            acc.plot(alphas, _mean(accs), style, color="tab:red", lw=1.8)
        plain_log_y(ax)
        for x in (0, 1):
            ax.axvline(x, color="k", lw=0.6, alpha=0.4)
        ax.set_xlabel(f"a   (a = 0: {s['a']};  a = 1: {s['b']})", fontsize=8)
        loss = str(s.get("loss", "cross_entropy")).replace("_", "-")
        ax.set_ylabel(f"{loss} (log scale)", color="tab:blue")
        acc.set_ylabel("accuracy (%)", color="tab:red")
        acc.set_ylim(0, 100)
        n = len(curves)
        ax.set_title(
            f"(1 - a) theta_A + a theta_B, {n} seed{'s' if n != 1 else ''}"
            f"{' (thin: one seed)' if n > 1 else ''}\ntrain dotted, validation solid",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def draw(
    sharpness: list[dict[str, Any]], sets: list[dict[str, Any]], out: Path
) -> list[tuple[str, str]]:
    """Draw the figures these analyses allow into ``out``; ``(file name, caption)`` pairs."""
    made = []
    for name, caption, fig in (
        (
            SHARPNESS_FILE,
            "epsilon-sharpness against batch size (analysis/sharpness.json)",
            sharpness_figure(sharpness),
        ),
        (
            INTERPOLATION_FILE,
            "parametric plot between two settings' solutions (interpolate.json)",
            interpolation_figure(sets),
        ),
    ):
        if fig is not None:
            fig.savefig(out / name, dpi=110)
            made.append((name, caption))
    return made


def _cell(d: dict[str, float], digits: int = 3) -> str:
    if d["n"] == 0:
        return "–"
    if d["n"] == 1 or math.isnan(d["std"]):
        return f"{d['mean']:.{digits}g}"
    return f"{d['mean']:.{digits}g} ± {d['std']:.{digits}g}"


def markdown(sharpness: list[dict[str, Any]], sets: list[dict[str, Any]]) -> list[str]:
    """The report's sections for these analyses (empty when the runs hold none)."""
    text: list[str] = []
    if sharpness:
        text += [
            "## Epsilon-sharpness (`analysis/sharpness.json`)",
            "",
            "Keskar et al.'s epsilon-sharpness: 100 x (the largest training loss found in the "
            "box |y_i| <= epsilon (|x_i| + 1) around the solution x, less the loss at x) / "
            "(1 + the loss at x); L-BFGS-B finds it, so it is a lower bound. Mean ± std over "
            "the completed runs of each setting.",
            "",
            "| setting | B | epsilon | space | epsilon-sharpness | loss at the solution | n |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sharpness:
            space = "full" if r["subspace_dim"] is None else f"{r['subspace_dim']}-D"
            text.append(
                f"| {r['setting']} | {r['batch']} | {r['epsilon']:g} | {space} | "
                f"{_cell(r['sharpness'])} | {_cell(r['loss'])} | {r['sharpness']['n']} |"
            )
        text.append("")
    if sets:
        text += ["## Parametric plot (interpolation between two solutions)", ""]
        for s in sets:
            alphas = s["curves"][0]["alpha"]
            vals = [c["val_loss"] for c in s["curves"] if c["alpha"] == alphas]
            mean = _mean(vals)
            best = min(range(len(mean)), key=mean.__getitem__)
            seeds = ", ".join(str(x) for x in s["seeds"] if x is not None) or "unknown"
            text.append(
                f"- {s['a']} (a = 0) to {s['b']} (a = 1), {len(s['curves'])} pair(s) (seeds "
                f"{seeds}): mean validation loss {mean[0]:.4g} at a = 0, "
                f"{mean[min(range(len(alphas)), key=lambda i: abs(alphas[i] - 1))]:.4g} at a = 1, "
                f"lowest {mean[best]:.4g} at a = {alphas[best]:g}."
            )
        text.append("")
    return text
