"""How much of the generalization gap a fix closes, paired by seed, with bootstrap intervals.

For a small-batch setting ``S``, a large-batch setting ``L`` and a fix ``F`` run with the same
seeds (the seed fixes initialisation, data order and noise, so runs with one seed are paired),
with ``a_X(s)`` the final validation accuracy of setting ``X`` at seed ``s``::

    gap            = mean_s [a_S(s) - a_L(s)]
    delta(F)       = mean_s [a_F(s) - a_L(s)]
    closed(F)      = delta(F) / gap                 (1 = the whole gap, 0 = nothing, < 0 worse)

The 95% intervals are percentile bootstrap intervals over seeds (``scipy.stats.bootstrap`` with
``paired=True``, ``method="percentile"``): the seeds present in all three settings are resampled
with replacement (``resamples`` times, from ``numpy.random.default_rng(0)``, so a report is
reproducible) and each statistic is recomputed on the resample, so the pairing is kept. Resamples
on which a statistic is undefined (``closed`` when the resampled gap is 0) are left out of the
percentiles. With few seeds the interval is wide; it says how far the number can be trusted; with
one seed there is none (``low = high = value``).

Example::

    >>> s = {0: 0.95, 1: 0.94, 2: 0.96}
    >>> l = {0: 0.92, 1: 0.93, 2: 0.93}
    >>> f = {0: 0.935, 1: 0.935, 2: 0.945}
    >>> result = gap_closed(s, l, f)
    >>> round(result.value, 3), result.n
    (0.5, 3)
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

RESAMPLES = 10_000


@dataclass(frozen=True)
class Estimate:
    """A statistic over paired seeds, with its 95% bootstrap interval."""

    value: float
    low: float
    high: float
    n: int

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """``value [low, high]``; the value alone for one seed (no interval to speak of)."""
        if self.n == 0 or not np.isfinite(self.value):
            return "–"

        def num(x: float) -> str:
            text = f"{x * scale:.{digits}f}"
            return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0"

        if self.n == 1:
            return f"{num(self.value)} (1 seed)"
        return f"{num(self.value)} [{num(self.low)}, {num(self.high)}]"


def _common_seeds(*settings: dict[int, float]) -> list[int]:
    seeds = set(settings[0])
    for s in settings[1:]:
        seeds &= set(s)
    return sorted(seeds)


Statistic = Callable[[np.ndarray], Any]
"""A statistic of paired columns: takes an array ``c`` of shape ``(..., seeds, k)`` (column ``j``
is ``c[..., j]``) and returns shape ``(...)`` (one statistic) or ``(q, ...)`` (``q`` statistics
of the same resamples), reducing over the seeds with ``axis=-1``."""

# scipy >= 1.15 takes the generator as ``rng``; earlier versions as ``random_state``.
_RNG = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"


def bootstrap_estimates(
    columns: np.ndarray, statistic: Statistic, resamples: int = RESAMPLES, seed: int = 0
) -> list[Estimate]:
    """``statistic(columns)`` and the 95% percentile interval of each of its ``q`` values, all
    from the same ``resamples`` resamples of the seeds (the rows of ``columns``, shape
    ``(seeds, k)``): ``scipy.stats.bootstrap(paired=True, method="percentile")`` with the
    generator ``numpy.random.default_rng(seed)``. Non-finite resampled values are left out of a
    statistic's percentiles; with one seed the interval is the value itself."""
    columns = np.asarray(columns, dtype=float)
    n = len(columns)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no seeds: nan
        value = np.atleast_1d(np.asarray(statistic(columns), dtype=float))
    nan = float("nan")
    if n < 2:  # no interval: scipy needs two observations to resample
        ends = [float(v) if n == 1 and np.isfinite(v) else nan for v in value]
        return [Estimate(float(v), e, e, n) for v, e in zip(value, ends, strict=True)]

    def paired(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(statistic(np.stack(cols, axis=-1)), dtype=float)

    with warnings.catch_warnings():  # an undefined resample: its percentiles are taken below
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        result = scipy.stats.bootstrap(
            tuple(columns.T),
            paired,
            n_resamples=resamples,
            paired=True,
            vectorized=True,
            method="percentile",
            confidence_level=0.95,
            **{_RNG: np.random.default_rng(seed)},
        )
    lows = np.atleast_1d(result.confidence_interval.low)
    highs = np.atleast_1d(result.confidence_interval.high)
    draws = np.atleast_2d(result.bootstrap_distribution)
    out = []
    for v, low, high, d in zip(value, lows, highs, draws, strict=True):
        if not (np.isfinite(low) and np.isfinite(high)):
            d = d[np.isfinite(d)]
            low, high = np.percentile(d, [2.5, 97.5]) if len(d) else (nan, nan)
        out.append(Estimate(float(v), float(low), float(high), n))
    return out


def _bootstrap(
    columns: np.ndarray, statistic: Statistic, resamples: int = RESAMPLES, seed: int = 0
) -> Estimate:
    """One statistic's :func:`bootstrap_estimates`."""
    (estimate,) = bootstrap_estimates(columns, statistic, resamples, seed)
    return estimate


def paired_difference(
    a: dict[int, float], b: dict[int, float], resamples: int = RESAMPLES
) -> Estimate:
    """``mean_s [a(s) - b(s)]`` over the seeds both have (``{seed: accuracy}``)."""
    seeds = _common_seeds(a, b)
    cols = np.array([[a[s], b[s]] for s in seeds], dtype=float).reshape(-1, 2)
    return _bootstrap(cols, lambda c: np.mean(c[..., 0] - c[..., 1], axis=-1), resamples)


def gap_closed(
    small: dict[int, float],
    large: dict[int, float],
    fix: dict[int, float],
    resamples: int = RESAMPLES,
) -> Estimate:
    """The fraction of the gap ``small - large`` that ``fix`` recovers, paired by seed."""
    seeds = _common_seeds(small, large, fix)
    cols = np.array([[small[s], large[s], fix[s]] for s in seeds], dtype=float).reshape(-1, 3)

    def closed(c: np.ndarray) -> np.ndarray:
        gap = np.mean(c[..., 0] - c[..., 1], axis=-1)
        delta = np.mean(c[..., 2] - c[..., 1], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap != 0, delta / np.where(gap != 0, gap, 1.0), np.nan)

    return _bootstrap(cols, closed, resamples)


# ----------------------------------------------------------------------------------------------
# The table a report shows (``largebatch report --gap SMALL LARGE``)


def _final_acc(group) -> dict[int, float]:
    return {r.seed: 100 * r.metrics[-1]["val_acc"] for r in group.completed}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _epoch_time(group) -> float:
    return _mean([np.mean([m["epoch_time_s"] for m in r.metrics]) for r in group.completed])


def _run_time(group) -> float:
    return _mean([r.summary.get("wall_time_s", float("nan")) for r in group.completed])


def _top_eigenvalue(group) -> tuple[float, int]:
    tops = [r.hessian["values"]["eigenvalues"][0] for r in group.completed if r.hessian]
    return _mean(tops), len(tops)


def find_group(groups: list, label: str):
    from largebatch.errors import UserError

    for g in groups:
        if g.label == label:
            return g
    raise UserError(
        f"--gap: no setting labelled '{label}'; settings: {', '.join(g.label for g in groups)}"
    )


def gap_rows(groups: list, small_label: str, large_label: str) -> list[dict]:
    """One row per setting: accuracy, paired difference to the large batch, fraction of the gap
    closed, time per epoch relative to the large batch, top Hessian eigenvalue."""
    small, large = find_group(groups, small_label), find_group(groups, large_label)
    a_s, a_l = _final_acc(small), _final_acc(large)
    t_l, w_l = _epoch_time(large), _run_time(large)
    rows = []
    for g in groups:
        acc = _final_acc(g)
        values = list(acc.values())
        top, n_top = _top_eigenvalue(g)
        rows.append(
            {
                "setting": g.label,
                "n": len(values),
                "val_acc": _mean(values),
                "val_acc_std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                "delta": paired_difference(acc, a_l),
                "closed": gap_closed(a_s, a_l, acc),
                "epoch_time_rel": _epoch_time(g) / t_l if t_l > 0 else float("nan"),
                "run_time_rel": _run_time(g) / w_l if w_l > 0 else float("nan"),
                "updates": _mean([r.metrics[-1]["step"] for r in g.completed]),
                "top_eigenvalue": top,
                "top_eigenvalue_n": n_top,
                "not_completed": len(g.runs) - len(g.completed),
            }
        )
    return rows


def _num(value: float, fmt: str, suffix: str = "") -> str:
    return f"{value:{fmt}}{suffix}" if np.isfinite(value) else "–"


def format_gap_table(rows: list[dict]) -> str:
    lines = [
        "| setting | n | val acc (%) | vs large batch (points) | gap closed (%) | time/epoch vs "
        "large | run time vs large | updates | top Hessian eigenvalue (n) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        top = (
            f"{r['top_eigenvalue']:.2f} ({r['top_eigenvalue_n']})" if r["top_eigenvalue_n"] else "–"
        )
        failed = f" ({r['not_completed']} not completed)" if r["not_completed"] else ""
        acc = _num(r["val_acc"], ".2f")
        if np.isfinite(r["val_acc_std"]):
            acc += f" ± {r['val_acc_std']:.2f}"
        lines.append(
            f"| {r['setting']}{failed} | {r['n']} | {acc} | {r['delta'].format()} | "
            f"{r['closed'].format(100, 0)} | {_num(r['epoch_time_rel'], '.2f', 'x')} | "
            f"{_num(r['run_time_rel'], '.2f', 'x')} | {_num(r['updates'], '.0f')} | {top} |"
        )
    return "\n".join(lines)


GAP_NOTE = (
    "Paired by seed (the seed fixes initialisation, data order and noise). 'vs large batch': "
    "mean over seeds of (setting − large batch) final validation accuracy, 95% percentile "
    "bootstrap interval over seeds. 'gap closed': that difference over the small − large "
    "difference, same bootstrap (100% = the whole gap; negative = worse than the large batch). "
    "Time per epoch: mean epoch_time_s relative to the large batch's; run time: mean wall time "
    "of a whole run (more epochs count), on the machine the runs used. Top Hessian "
    "eigenvalue: mean over the runs with analysis/hessian.json."
)
