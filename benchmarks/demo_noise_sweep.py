"""How the demo's noise level was chosen: validation accuracy against noise alpha at B_L.

Runs the sweep preset ``configs/sweeps/demo_noise.yaml`` (the demo's exact setting at the large
batch for several alpha, and the small batch without noise) through ``largebatch sweep``, reads
the runs back with ``largebatch report``'s grouping, and writes the table to RESULTS.md. About 3
minutes on a 2-core CPU per seed.

    python benchmarks/demo_noise_sweep.py [--seeds 3] [--out runs/sweeps/demo_noise]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import machine, write_section

from largebatch.experiments.sweep import load_spec, run_sweep
from largebatch.report import write_report

SPEC = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "demo_noise.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/sweeps/demo_noise")
    args = parser.parse_args()
    spec = load_spec(SPEC, seeds=args.seeds)
    out, _ = run_sweep(spec, Path(args.out))
    rows = write_report([out], out / "report")["rows"]
    lines = [
        f"| {r['setting']} | {r['final_val_acc']['mean']:.2f} ± {r['final_val_acc']['std']:.2f} "
        f"| {r['train_acc']['mean']:.2f} | {r['final_val_acc']['n']} |"
        for r in rows
    ]
    body = (
        f"Machine: {machine(1)}\n\n"
        "Demo setting (MNIST-1D 4000/1000, cnn1d + BatchNorm, 30 epochs, lr 0.01 at B=32, linear "
        f"scaling; `configs/sweeps/demo_noise.yaml`), {args.seeds} seeds, mean ± std.\n\n"
        "| setting | val acc (%) | train acc (%) | n |\n|---|---|---|---|\n" + "\n".join(lines)
    )
    write_section("Demo noise sweep (issue 3)", body)


if __name__ == "__main__":
    main()
