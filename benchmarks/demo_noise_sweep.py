"""How the demo's noise level was chosen: validation accuracy against noise alpha at B_L.

Runs the demo's exact setting (MNIST-1D, 1-D CNN + BatchNorm, 30 epochs, linear scaling) at the
large batch for several alpha, and the small batch without noise, a few seeds each; writes the
table to RESULTS.md. About 3 minutes on a 2-core CPU.

    python benchmarks/demo_noise_sweep.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from common import machine, write_section

from largebatch.demo import LARGE_BATCH, SETTINGS, SMALL_BATCH, Setting, plan_for, run_config
from largebatch.engine import train

ALPHAS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plan = plan_for(quick=False, seeds=args.seeds)
    rows = []
    settings = [SETTINGS[0]] + [
        Setting(f"a{a}", f"B={LARGE_BATCH}, alpha={a:g}", LARGE_BATCH, a, "") for a in ALPHAS
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for s in settings:
            val, tr = [], []
            for seed in range(args.seeds):
                result = train(run_config(plan, s, seed), Path(tmp) / s.key / str(seed))
                f = result.summary["final"]
                val.append(100 * f["val_acc"])
                tr.append(100 * f["train_acc"])
            rows.append(
                f"| {s.label} | {statistics.fmean(val):.2f} ± {statistics.stdev(val):.2f} | "
                f"{statistics.fmean(tr):.2f} |"
            )
            print(rows[-1], flush=True)
    body = (
        f"Machine: {machine(1)}\n\n"
        f"Demo setting (MNIST-1D 4000/1000, cnn1d + BatchNorm, {plan.epochs} epochs, lr 0.01 at "
        f"B={SMALL_BATCH}, linear scaling), {args.seeds} seeds, mean ± std.\n\n"
        "| setting | val acc (%) | train acc (%) |\n|---|---|---|\n" + "\n".join(rows)
    )
    write_section("Demo noise sweep (issue 3)", body)


if __name__ == "__main__":
    main()
