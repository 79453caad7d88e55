"""What kind of gap a large batch has: a fit gap, a generalization gap, both, or none.

For a small-batch setting ``S`` and a large-batch setting ``L`` run for the same epochs with the
same seeds (the seed fixes initialisation, data order and noise, so runs with one seed are
paired), with ``t_X(s)`` and ``v_X(s)`` the final train and validation accuracy of ``X`` at seed
``s``, in points (percent)::

    val gap             D = mean_s [v_S(s) - v_L(s)]
    fit gap             F = mean_s [t_S(s) - t_L(s)]
    generalization gap  G = mean_s [(t_L(s) - v_L(s)) - (t_S(s) - v_S(s))]
                          = mean_s [(v_S(s) - v_L(s)) - (t_S(s) - t_L(s))]  = D - F

so ``D = F + G`` exactly. A fit gap means the large batch did not fit the training set as well
(too few updates, too small a step): try *optimisation* first (learning rate, warmup, LARS,
stabilisers, more updates). A generalization gap means it fits as well but validates worse: try
a *regulariser* first (the SAM family, label smoothing, Ghost BatchNorm, gradient noise).

Each of D, F and G comes with a 95% percentile bootstrap interval over seeds
(:func:`largebatch.report.gap.bootstrap_estimates`: ``scipy.stats.bootstrap`` with
``paired=True``, one call for all three, so they come from the same resamples of the seeds and
the pairing is kept).

Decision rule, with ``min_points`` (default 0.5 points) the smallest effect worth a fix:

* there is a gap to explain only when D's interval lies above 0; otherwise the kind is
  ``"none"`` ("no gap distinguishable from seed noise");
* a part (F or G) *counts* when its interval's lower end is above 0 **and** its value is at least
  ``max(min_points, 0.25 * D)`` points (a quarter of the gap: a part that explains less is not
  where to look first);
* kind = ``"both"`` when F and G count, ``"fit"`` or ``"generalization"`` when one does,
  ``"none"`` when neither does.

With one seed there is no interval: D must be at least ``min_points`` and each part is judged by
its value against the threshold alone; the reason says "(1 seed: no interval)".

Example (train 100 vs 90-91, validation 94-95 vs 86-87: the large batch does not fit)::

    >>> small = {0: (1.00, 0.95), 1: (1.00, 0.94), 2: (0.99, 0.95)}
    >>> large = {0: (0.90, 0.86), 1: (0.91, 0.86), 2: (0.90, 0.87)}
    >>> d = diagnose(small, large)
    >>> d.kind, d.candidates()
    ('fit', ('optimisation',))
    >>> round(d.val_gap.value, 2), round(d.fit_gap.value, 2), round(d.generalization_gap.value, 2)
    (8.33, 9.33, -1.0)
    >>> diagnose({0: (1.0, 0.95), 1: (1.0, 0.96)}, {0: (1.0, 0.93), 1: (1.0, 0.94)}).kind
    'generalization'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from largebatch.report.gap import RESAMPLES, Estimate, bootstrap_estimates

KINDS = ("fit", "generalization", "both", "none")

_CANDIDATES: dict[str, tuple[str, ...]] = {
    "fit": ("optimisation",),
    "generalization": ("regulariser",),
    "both": ("optimisation", "regulariser"),
    "none": (),
}

FAMILIES = {
    "optimisation": "optimisation (learning rate, warmup, LARS, stabilisers, more updates)",
    "regulariser": "a regulariser (SAM family, label smoothing, Ghost BatchNorm, gradient noise)",
}
"""What each candidate family of :meth:`GapDiagnosis.candidates` stands for."""


@dataclass(frozen=True)
class GapDiagnosis:
    """What kind of gap ``small - large`` is, with the numbers that decide it (points)."""

    kind: str
    """``"fit"``, ``"generalization"``, ``"both"`` or ``"none"``."""
    val_gap: Estimate
    """D = mean over seeds of small − large final validation accuracy (points)."""
    fit_gap: Estimate
    """F = mean over seeds of small − large final train accuracy (points)."""
    generalization_gap: Estimate
    """G = mean over seeds of (val_S − val_L) − (train_S − train_L) = D − F (points)."""
    train_small: float
    """Mean final train accuracy of the small batch over the paired seeds (points)."""
    train_large: float
    n: int
    """Seeds present in both settings."""
    reason: str
    """One line: the numbers that decide the kind."""

    def candidates(self) -> tuple[str, ...]:
        """The fix families to try first, in order (keys of :data:`FAMILIES`)."""
        return _CANDIDATES[self.kind]


def _gaps(c: np.ndarray) -> np.ndarray:
    """D, F and G of columns ``(train_S, val_S, train_L, val_L)`` (``c[..., j]``), over seeds."""
    val = np.mean(c[..., 1] - c[..., 3], axis=-1)
    fit = np.mean(c[..., 0] - c[..., 2], axis=-1)
    gen = np.mean((c[..., 1] - c[..., 3]) - (c[..., 0] - c[..., 2]), axis=-1)
    return np.stack([val, fit, gen])


def _verdict(name: str, est: Estimate, threshold: float) -> tuple[bool, str]:
    """Whether a part counts, and the words that say why."""
    if est.n > 1 and not est.low > 0:
        return False, f"{name} {est.format()}: interval not above 0"
    counts = est.value >= threshold
    return counts, f"{name} {est.format()} {'≥' if counts else '<'} {threshold:.2f}"


def diagnose(
    small: dict[int, tuple[float, float]],
    large: dict[int, tuple[float, float]],
    min_points: float = 0.5,
    resamples: int = RESAMPLES,
) -> GapDiagnosis:
    """The kind of gap between ``small`` and ``large`` (``{seed: (train_acc, val_acc)}``,
    fractions in [0, 1]), paired over the seeds both have; see the module docstring for the
    rule and ``min_points``."""
    for name, setting in (("small", small), ("large", large)):
        for seed, accs in setting.items():
            if len(accs) != 2 or not all(0 <= a <= 1 for a in accs):
                raise ValueError(
                    f"{name}[{seed}] = {accs!r}: expected (train_acc, val_acc) as fractions "
                    "in [0, 1]"
                )
    seeds = sorted(set(small) & set(large))
    # columns: train_S, val_S, train_L, val_L in points
    cols = 100 * np.array([[*small[s], *large[s]] for s in seeds], dtype=float).reshape(-1, 4)
    n = len(seeds)
    val_gap, fit_gap, gen_gap = bootstrap_estimates(cols, _gaps, resamples)
    train_small = float(np.mean(cols[:, 0])) if n else math.nan
    train_large = float(np.mean(cols[:, 2])) if n else math.nan

    one = " (1 seed: no interval)" if n == 1 else ""
    kind = "none"
    if n == 0:
        reason = "no seed completed in both settings"
    elif n == 1 and val_gap.value < min_points:
        reason = f"no gap of at least {min_points:.2f} points: val gap {val_gap.format()}{one}"
    elif n > 1 and not val_gap.low > 0:
        reason = (
            f"no gap: the large batch validates better, val gap {val_gap.format()} points"
            if val_gap.high < 0
            else f"no gap distinguishable from seed noise: val gap {val_gap.format()} points, "
            "interval includes 0"
        )
    else:
        threshold = max(min_points, 0.25 * val_gap.value)
        fit, fit_text = _verdict("fit gap", fit_gap, threshold)
        gen, gen_text = _verdict("generalization gap", gen_gap, threshold)
        kind = {
            (True, True): "both",
            (True, False): "fit",
            (False, True): "generalization",
            (False, False): "none",
        }[(fit, gen)]
        reason = (
            f"{fit_text}; {gen_text} (threshold max({min_points:.2f}, 0.25 × val gap "
            f"{val_gap.value:.2f}) = {threshold:.2f} points){one}"
        )
        if kind == "none":
            reason = f"neither part counts: {reason}"
    return GapDiagnosis(kind, val_gap, fit_gap, gen_gap, train_small, train_large, n, reason)


def _final(group) -> dict[int, tuple[float, float]]:
    return {r.seed: (r.metrics[-1]["train_acc"], r.metrics[-1]["val_acc"]) for r in group.completed}


def diagnose_groups(small_group, large_group, min_points: float = 0.5) -> GapDiagnosis:
    """:func:`diagnose` from two :class:`largebatch.report.data.Group` (their completed runs'
    last line of ``metrics.jsonl``)."""
    return diagnose(_final(small_group), _final(large_group), min_points)


def format_diagnosis(d: GapDiagnosis) -> str:
    """A short markdown paragraph: the kind, D, F and G with their intervals, the train
    accuracies, and what to try first."""
    kind = "**both** (fit and generalization)" if d.kind == "both" else f"**{d.kind}**"
    if d.candidates():
        first = "Try first: " + ", then ".join(FAMILIES[c] for c in d.candidates()) + "."
    else:
        first = "Try first: nothing (no part of the gap counts)."
    seeds = f"{d.n} seed{'s' if d.n != 1 else ''}"

    def pct(x: float) -> str:
        return f"{x:.2f}%" if math.isfinite(x) else "–"

    return (
        f"Kind of gap: {kind}. Small − large batch, paired over {seeds} (points; 95% "
        f"bootstrap interval over seeds): val gap D = {d.val_gap.format()}, fit gap (final "
        f"train accuracy) F = {d.fit_gap.format()}, generalization gap G = D − F = "
        f"{d.generalization_gap.format()}. Final train accuracy: small {pct(d.train_small)}, "
        f"large {pct(d.train_large)}. Why: {d.reason}. {first}"
    )
