"""``largebatch demo``: the generalization gap of a large batch, and the paper's fix, on MNIST-1D.

The demo is the sweep preset ``configs/sweeps/demo.yaml`` plus the report, with a verdict:

- small batch ``B_S = 32`` at the base learning rate 0.01;
- large batch ``B_L = 512`` with the linear scaling rule (``lr * B_L / B_S``);
- the same large batch with gradient noise ``sigma_t^2 = alpha / (1 + t)^gamma``, the paper's
  ``alpha = 1e-5``, ``gamma = 0.55``;
- the same large batch with the fix that the comparison protocol (``largebatch compare
  configs/compare/demo.yaml``) chose on its selection seeds and confirmed on fresh ones: label
  smoothing 0.1, at the large batch's cost (one pass per update);

equal epochs for all (30, as in the paper), 10 seeds per setting (``--quick``: 2). The model is a
1-D CNN with BatchNorm trained to ~100% training accuracy on 4000 MNIST-1D examples: the paper's
regime at CPU size. Each run is a normal run directory under ``OUT/runs/``; run again, the demo
skips the runs that completed, resumes the ones that were stopped, and one failed run does not
stop the others (see :mod:`largebatch.experiments.sweep`).

Outputs in the output folder: ``report.md`` (the report of :mod:`largebatch.report` and the
demo's verdict), ``table.md`` (the paper's Table 2 form), ``curves.png`` (train dotted,
validation solid, a band over seeds, like the paper's Figs. 4 and 7) and ``report.json``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from largebatch.errors import UserError
from largebatch.experiments.sweep import load_spec, run_sweep, sweep_failures
from largebatch.report import write_report
from largebatch.report.data import find_runs, group_runs
from largebatch.report.gap import Estimate, gap_rows

NOISE_ALPHA = 1e-5
NOISE_GAMMA = 0.55


def spec_path() -> Path:
    """The demo's sweep preset (installed with the package, or in this checkout)."""
    from largebatch.presets import resolve_preset

    return resolve_preset("sweeps/demo")


MIN_SEEDS = 5  # below this a percentile bootstrap over seeds has too few distinct resamples


def _judge(closed: Estimate) -> str:
    """Words for a fraction of the gap closed, from its paired 95% interval (the issue's goal
    for "the whole gap": at least 90%, with the interval's lower end above 50%)."""
    if closed.n < MIN_SEEDS:
        return (
            f"{closed.n} seed(s): too few for a bootstrap interval to mean much, no verdict "
            f"(run {MIN_SEEDS} or more)"
        )
    if closed.low > 0:
        whole = closed.value >= 0.9 and closed.low > 0.5
        return "closes the whole gap" if whole else "closes part of the gap"
    if closed.high < 0:
        return "makes the gap wider"
    return "no effect distinguishable from seed-to-seed variation"


def verdict(rows: list[dict[str, Any]]) -> str:
    """Rows of :func:`largebatch.report.gap.gap_rows` in the spec's order: small batch, large
    batch, then the fixes."""
    if len(rows) < 3 or min(r["n"] for r in rows[:2]) == 0:
        return "Some settings have no completed run; no comparison can be made."
    small, large = rows[0], rows[1]
    gap = small["delta"]  # the small batch's paired difference to the large batch
    lines = [
        f"- Large batch vs small batch: {large['val_acc']:.2f}% vs {small['val_acc']:.2f}% "
        f"validation accuracy: a gap of {gap.format()} points (paired by seed, 95% bootstrap "
        "interval).",
    ]
    if gap.n >= MIN_SEEDS and gap.low <= 0:
        lines.append("- On this data the large batch opens no gap beyond seed-to-seed variation.")
    for r in rows[2:]:
        closed = r["closed"]
        lines.append(
            f"- {r['setting']}: {r['val_acc']:.2f}%, {closed.format(100, 0)}% of the gap "
            f"closed, {r['run_time_rel']:.2f}x the large batch's run time: "
            f"{_judge(closed)}."
        )
    return "\n".join(lines)


NOISE_CHOICE = f"""The noise level is the paper's: alpha = {NOISE_ALPHA:g} (a variance), gamma =
{NOISE_GAMMA}. Why: a sweep of alpha at B=512 on this exact setting (3 seeds, 30 epochs;
`benchmarks/demo_noise_sweep.py`, numbers in `benchmarks/RESULTS.md`) found no alpha that helps:
alpha <= 1e-4 leaves validation accuracy within seed-to-seed variation, 1e-3 costs about 5 points
and 1e-2 about 25. The paper's value sits in the harmless range and is what a user of the method
would try first, so the demo shows it rather than a value tuned on the validation set."""


def run_demo(
    quick: bool = False,
    out: Path | None = None,
    seeds: int | None = None,
    overrides: list[str] | None = None,
    workers: int | None = None,
) -> int:
    """Run (or finish) the demo's sweep, then write its report; 1 if any run did not complete.

    ``overrides`` (``KEY=VALUE``) change every run: for tests, e.g. ``train.epochs=2``.
    """
    if seeds is not None and seeds < 1:
        raise UserError("--seeds must be at least 1")
    spec = load_spec(spec_path(), quick=quick, seeds=seeds, overrides=overrides)
    if workers is None and not torch.cuda.is_available():
        workers = max(1, min(2, os.cpu_count() or 1))  # independent runs: one per core
    out = out or Path("runs") / ("demo-quick" if quick else "demo")
    started = time.time()
    _, manifest = run_sweep(spec, out, workers=workers)
    title = "largebatch demo: the generalization gap, the paper's noise and the best fix, MNIST-1D"
    small, large = list(dict.fromkeys(r.label for r in spec.runs))[:2]
    write_report([out], out, title=title, gap=(small, large))
    text = verdict(gap_rows(group_runs(find_runs([out])), small, large))
    with open(out / "report.md", "a") as f:
        f.write(f"\n## What it shows\n\n{text}\n\n## Noise level\n\n{NOISE_CHOICE}\n")
    wall = time.time() - started
    print()
    print((out / "table.md").read_text())
    print(text)
    print(f"\nreport: {out / 'report.md'}  curves: {out / 'curves.png'}  ({wall:.0f} s)")
    failed = sweep_failures(manifest)
    if failed:
        print(
            f"{len(failed)} run(s) not completed; rerun the same command to retry", file=sys.stderr
        )
        return 1
    return 0
