"""Runs read back for a report: grouped by setting, with their statistics over seeds.

A *setting* is the resolved config minus the seeds (``train.seed``, ``noise.seed``) and the keys
that do not change what is computed (``IGNORED_KEYS``: threads, device, progress, ...). The
statistics are over a setting's completed runs: mean, sample standard deviation (``ddof=1``), n
and the half-width of the 95% t-interval of the mean. Diverged and failed runs are counted, never
averaged in. Everything here reads run directories; nothing trains.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scipy.stats

from largebatch import rundir
from largebatch.errors import UserError

SEED_KEYS = ("train.seed", "noise.seed")
IGNORED_KEYS = frozenset(
    {
        *SEED_KEYS,
        "train.threads",
        "train.device",
        "train.progress",
        "train.eval_batch_size",
        "train.checkpoint_every_epochs",
        "train.plugins",
        "data.root",
        "data.num_workers",
        "data.cache_dir",
    }
)


def t_quantile(n: int) -> float:
    """The two-sided 95% quantile of Student's t for a mean of ``n`` values (``n - 1`` degrees of
    freedom): ``scipy.stats.t.ppf(0.975, n - 1)``, e.g. 4.303 at n = 3, 2.023 at n = 40 (never the
    normal's 1.96). nan for n < 2."""
    if n < 2:
        return math.nan
    return float(scipy.stats.t.ppf(0.975, n - 1))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line)) if line.strip() else None
            except json.JSONDecodeError:
                break  # a line cut by a kill
    return rows


def _flatten(cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"train.global_batch_size": 512, ...}``; a mapping-valued key is spread into its entries
    (``model.args: {depth: 3}`` -> ``model.args.depth``), so settings differ by entry."""
    flat = {}
    for s, keys in cfg.items():
        for k, v in (keys or {}).items():
            if isinstance(v, dict):
                flat.update({f"{s}.{k}.{name}": value for name, value in v.items()})
            else:
                flat[f"{s}.{k}"] = v
    return flat


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    """Flat: ``{"train.global_batch_size": 512, ...}``."""
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    env: dict[str, Any]
    data: dict[str, Any]
    hessian: dict[str, Any] | None = None
    label: str | None = None
    surface: dict[str, Any] | None = None
    """``analysis/surface_1d.json``, when ``largebatch analyze surface --dim 1`` ran."""

    @property
    def status(self) -> str:
        """``summary.json``'s status; ``truncated: N of M epochs`` (see :attr:`truncation`) for
        a run that says completed but whose ``metrics.jsonl`` lacks epochs."""
        return self.truncation or self.summary.get("status", "unknown")

    @property
    def expected_epochs(self) -> int | None:
        """The epochs the run made: ``summary.json``'s ``epochs_completed`` (its last epoch when
        that is absent), else the config's length (``train.epochs``, stretched under
        ``train.scale_epochs``); None when nothing says."""
        done = self.summary.get("epochs_completed")
        if not isinstance(done, int):
            final = self.summary.get("final")
            done = final.get("epoch") if isinstance(final, dict) else None
        if isinstance(done, int) and not isinstance(done, bool):
            return done
        epochs = self.config.get("train.epochs")
        if not isinstance(epochs, int):
            return None
        if self.config.get("train.scale_epochs"):
            try:
                base = self.config["optim.base_batch_size"]
                return round(epochs * self.config["train.global_batch_size"] / base)
            except (KeyError, TypeError, ZeroDivisionError):
                return None
        return epochs

    @property
    def truncation(self) -> str | None:
        """``truncated: N of M epochs`` when ``summary.json`` says completed but
        ``metrics.jsonl`` holds fewer epochs than the run made (a lost or cut line): such a run
        is not averaged in. None otherwise."""
        if self.summary.get("status") != "completed":
            return None
        expected = self.expected_epochs
        recorded = len({r.get("epoch") for r in self.metrics})
        if expected is None or recorded >= expected:
            return None
        return f"truncated: {recorded} of {expected} epochs"

    @property
    def seed(self) -> int:
        return self.config.get("train.seed", 0)

    @property
    def batch(self) -> int:
        return self.config["train.global_batch_size"]

    @property
    def lr(self) -> float:
        """The learning rate after scaling (``data.json``), else the base one."""
        return self.data.get("scaled_lr", self.config["optim.lr"])

    def setting_key(self) -> str:
        return json.dumps(
            {k: v for k, v in self.config.items() if k not in IGNORED_KEYS}, sort_keys=True
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = rundir.read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load_run(path: Path, label: str | None = None) -> Run:
    """Read one run directory; a ``config.yaml`` that is missing, not YAML, not a mapping of
    sections or holds a ``!!python/`` tag (never constructed: safe loading) raises
    :class:`UserError` naming the file."""
    path = Path(path)
    raw = rundir.read_config_dict(path)
    bad = [k for k, v in raw.items() if v is not None and not isinstance(v, dict)]
    if bad:
        raise UserError(
            f"{path / 'config.yaml'}: section '{bad[0]}' is not a mapping of keys; restore the "
            "file from a copy"
        )
    config = _flatten(raw)
    hessian = _read_json(path / "analysis" / "hessian.json") or None
    return Run(
        path,
        config,
        _read_json(path / "summary.json"),
        [r for r in rundir.read_metrics(path) if isinstance(r, dict)],
        [r for r in _jsonl(path / "evals.jsonl") if isinstance(r, dict)],
        _read_json(path / "env.json"),
        _read_json(path / "data.json"),
        hessian,
        label,
        _read_json(path / "analysis" / "surface_1d.json") or None,
    )


@dataclass(frozen=True)
class Skipped:
    """A run directory (or a sweep's planned run) the report could not read, and why."""

    path: Path
    reason: str


NO_CONFIG = "no config.yaml (not a run directory, or it lost its config)"


def _run_folders_without_config(d: Path, runs: set[Path]) -> list[Path]:
    """Folders below ``d`` holding what only a run directory holds (``summary.json``,
    ``metrics.jsonl``, ``checkpoints/last.pt``) but no ``config.yaml``."""
    marked = {x.parent for name in ("summary.json", "metrics.jsonl") for x in d.rglob(name)}
    marked |= {x.parent.parent for x in d.rglob("last.pt") if x.parent.name == "checkpoints"}
    return sorted(p for p in marked - runs if not (p / "config.yaml").is_file())


def _candidates(d: Path, skipped: list[Skipped]) -> list[tuple[Path, str | None]]:
    """The run directories in ``d`` (with their sweep labels); what looks like a run but cannot
    be one is added to ``skipped``."""
    if (d / "config.yaml").is_file():
        return [(d, None)]
    if (d / "sweep.json").is_file():
        entries = _read_json(d / "sweep.json").get("runs")
        if isinstance(entries, list) and all(isinstance(r, dict) and "dir" in r for r in entries):
            found = []
            for r in entries:
                p = d / str(r["dir"])
                if (p / "config.yaml").is_file():
                    found.append((p, r.get("label")))
                elif p.is_dir():
                    skipped.append(Skipped(p, NO_CONFIG))
                else:
                    status = r.get("status", "pending")
                    skipped.append(Skipped(p, f"no run directory (sweep.json says {status})"))
            return found
        skipped.append(
            Skipped(d / "sweep.json", "unreadable; its runs are found by their config.yaml")
        )
    found = [(p.parent, None) for p in sorted(d.rglob("config.yaml"))]
    for p in _run_folders_without_config(d, {p for p, _ in found}):
        skipped.append(Skipped(p, NO_CONFIG))
    return found


def scan_runs(dirs: list[str | Path]) -> tuple[list[Run], list[Skipped]]:
    """Runs from run directories, sweep folders (``sweep.json``: its order and labels) or any
    folder holding run directories below it; and the ones skipped, with the reason.

    A run whose ``config.yaml`` is missing or unreadable is skipped, never read in part. Raises
    :class:`UserError` when a folder does not exist or no run at all could be read."""
    runs: list[Run] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"{d}: no such directory")
        for p, label in _candidates(d, skipped):
            if p.resolve() in seen:
                continue
            seen.add(p.resolve())
            try:
                runs.append(load_run(p, label))
            except UserError as e:
                skipped.append(Skipped(p, str(e)))
    if not runs:
        where = ", ".join(map(str, dirs))
        if skipped:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
            more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
            raise UserError(f"no readable run directories in {where}: {reasons}{more}")
        raise UserError(f"no run directories (with config.yaml) in {where}")
    return runs, skipped


def skip_lines(runs: list[Run], skipped: list[Skipped]) -> list[str]:
    """One line per run a report leaves out: unreadable ones, and truncated ones (counted as
    not completed, never averaged in)."""
    lines = [f"skipped {s.path}: {s.reason}" for s in skipped]
    lines += [
        f"skipped {r.path}: {r.truncation} in metrics.jsonl, though summary.json says completed "
        "(not averaged in)"
        for r in runs
        if r.truncation
    ]
    return lines


def find_runs(dirs: list[str | Path]) -> list[Run]:
    """The runs of :func:`scan_runs`; each one skipped is printed on stderr with its reason."""
    runs, skipped = scan_runs(dirs)
    for line in skip_lines(runs, skipped):
        print(f"report: {line}", file=sys.stderr)
    return runs


@dataclass
class Group:
    label: str
    runs: list[Run]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed" and r.metrics]


def group_runs(runs: list[Run]) -> list[Group]:
    """Group by setting, in the order settings first appear; label by the keys that differ."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.setting_key(), []).append(run)
    configs = [json.loads(k) for k in by_key]
    keys = dict.fromkeys(k for c in configs for k in c)  # a plugin's model.args.* may be absent
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    short = {k: k.rsplit(".", 1)[1] for k in varying}
    if len(set(short.values())) < len(short):
        short = {k: k for k in varying}
    derived = [
        ", ".join(f"{short[k]}={_fmt_value(cfg.get(k))}" for k in varying) or "all"
        for cfg in configs
    ]
    given = [{r.label for r in members} for members in by_key.values()]
    labels = [g.pop() if len(g) == 1 and None not in g else None for g in given]
    if None in labels or len(set(labels)) < len(labels):
        labels = derived  # labels from a sweep's manifest only when one per setting, unique
    return [
        Group(label, sorted(members, key=lambda r: r.seed), cfg)
        for label, cfg, members in zip(labels, configs, by_key.values(), strict=True)
    ]


def _fmt_value(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    """Sample standard deviation (ddof=1); nan for n = 1."""
    n: int
    ci95: float
    """Half-width of the 95% t-interval of the mean; nan for n = 1."""

    def __str__(self) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f}"


def stat(values: list[float]) -> Stat:
    n = len(values)
    if n == 0:
        return Stat(math.nan, math.nan, 0, math.nan)
    mean = statistics.fmean(values)
    if n == 1:
        return Stat(mean, math.nan, 1, math.nan)
    std = statistics.stdev(values)
    return Stat(mean, std, n, t_quantile(n) * std / math.sqrt(n))


def run_values(run: Run) -> dict[str, float]:
    """The per-run numbers the table averages (accuracies in percent)."""
    final = run.metrics[-1]
    return {
        "final_val_acc": 100 * final["val_acc"],
        "best_val_acc": 100 * max(r["val_acc"] for r in run.metrics),
        "train_acc": 100 * final["train_acc"],
        "gap": 100 * final["gap"],
        "updates": final["step"],
        "wall_s": run.summary.get("wall_time_s", math.nan),
    }


def setting_rows(groups: list[Group]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        values = [run_values(r) for r in g.completed]
        row: dict[str, Any] = {
            "setting": g.label,
            "batch": g.config.get("train.global_batch_size"),
            "lr": g.runs[0].lr,
            "epochs": g.config.get("train.epochs"),
            "seeds": [r.seed for r in g.completed],
            "not_completed": {r.path.name: r.status for r in g.runs if r not in g.completed},
        }
        for key in ("final_val_acc", "best_val_acc", "train_acc", "gap", "updates", "wall_s"):
            s = stat([v[key] for v in values])
            row[key] = {"mean": s.mean, "std": s.std, "n": s.n, "ci95": s.ci95}
        rows.append(row)
    return rows


def evaluations(run: Run) -> list[tuple[int, float]]:
    """``(step, val_acc)`` of every evaluation: ``evals.jsonl`` and the per-epoch rows, by step."""
    points = {r["step"]: r["val_acc"] for r in run.metrics if "step" in r}
    points.update({r["step"]: r["val_acc"] for r in run.evals if "step" in r})
    return sorted(points.items())


def steps_to_target(points: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose validation accuracy (a fraction) reaches ``target``."""
    for step, acc in points:
        if acc >= target:
            return step
    return None


def default_target(groups: list[Group]) -> float:
    """The best accuracy every completed run reaches (floored to 0.1 point): a fraction."""
    bests = [max(a for _, a in evaluations(r)) for g in groups for r in g.completed]
    return math.floor(1000 * min(bests)) / 1000 if bests else math.nan


def steps_rows(groups: list[Group], target: float) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        steps = [steps_to_target(evaluations(r), target) for r in g.completed]
        reached = [s for s in steps if s is not None]
        s = stat([float(x) for x in reached])
        rows.append(
            {
                "setting": g.label,
                "batch": g.config.get("train.global_batch_size"),
                "steps": {"mean": s.mean, "std": s.std, "n": s.n, "ci95": s.ci95},
                "runs": len(steps),
                "per_run": steps,
                "resolution": "evals.jsonl" if any(r.evals for r in g.completed) else "epochs",
            }
        )
    return rows


def hessian_rows(groups: list[Group]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        tops = [r.hessian["values"]["eigenvalues"][0] for r in g.completed if r.hessian]
        if tops:
            s = stat(tops)
            b = g.config["train.global_batch_size"]
            rows.append(
                {
                    "setting": g.label,
                    "batch": b,
                    "lr_over_b": g.runs[0].lr / b,
                    "top_eigenvalue": {"mean": s.mean, "std": s.std, "n": s.n, "ci95": s.ci95},
                    "per_run": tops,
                }
            )
    return rows


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation, ``scipy.stats.spearmanr`` (average ranks for ties), over the
    pairs where both values are finite; nan with fewer than 3 such pairs or when either side is
    constant (a constant has no ranks to correlate: lr/B is one under linear scaling)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan
    return float(scipy.stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
