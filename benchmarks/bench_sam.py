"""What a sharpness-aware update costs over a plain one, through the engine's real step.

The demo's setting (``configs/mnist1d_cnn.yaml``: MNIST-1D, 1-D CNN + BatchNorm, generated
locally) at B=512, built by :func:`largebatch.engine.build_run`; every variant is one
:func:`largebatch.engine.optimizer_update` per step, fed as the training loop feeds it
(:class:`common.EngineSteps`), timed in one process with the blocks interleaved so a busy machine
slows all alike:

- plain: ``optimizer_update`` without a sharpness-aware kind (the reference);
- plain, micro 128: the same with 4 accumulated micro-batches (the reference for m-SAM and the
  finite-difference penalty, which pass over the same micro-batches);
- Momentum-SAM (rho 0.3): one pass at ``theta - rho v/|v|`` plus a norm, an add and a copy;
- SAM (rho 0.05), m-SAM (micro 128, rho 0.05), the finite-difference penalty (micro 128, lambda
  0.01): two passes.

Targets (issue 16): Momentum-SAM <= 1.05x plain; SAM and m-SAM <= 2.1x their plain reference.
A plain hand-written loop is the reference of ``bench_engine.py``; here the reference is the
engine's own plain update, since the question is what the sharpness-aware kind adds to it.

    python benchmarks/bench_sam.py [--repeats 15] [--steps 10] [--threads 1] [--note TEXT]
"""

from __future__ import annotations

import argparse

import torch
from common import (
    ROOT,
    EngineSteps,
    build_cpu_run,
    interleaved,
    machine,
    median,
    paired_ratio,
    set_threads,
    throughput,
    write_section,
)

from largebatch.config import load_config

TITLE = "What a sharpness-aware update costs (issue 16)"
BATCH = 512
CPU = torch.device("cpu")
VARIANTS = {
    "plain": [],
    "plain, micro 128": ["train.micro_batch_size=128"],
    "Momentum-SAM": ["optim.sam=momentum", "optim.sam_rho=0.3"],
    "SAM": ["optim.sam=sam", "optim.sam_rho=0.05"],
    "m-SAM, micro 128": ["optim.sam=msam", "optim.sam_rho=0.05", "train.micro_batch_size=128"],
    "penalty, finite difference, micro 128": [
        "optim.grad_penalty=0.01",
        "optim.grad_penalty_form=finite_difference",
        "train.micro_batch_size=128",
    ],
}
REFERENCE = {
    "Momentum-SAM": ("plain", 1.05),
    "SAM": ("plain", 2.1),
    "m-SAM, micro 128": ("plain, micro 128", 2.1),
    "penalty, finite difference, micro 128": ("plain, micro 128", 2.1),
}


def steps_for(overrides: list[str]) -> EngineSteps:
    cfg = load_config(
        ROOT / "configs" / "mnist1d_cnn.yaml",
        [f"train.global_batch_size={BATCH}", "train.threads=null", *overrides],
    )
    return EngineSteps(build_cpu_run(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed blocks per variant")
    parser.add_argument("--steps", type=int, default=10, help="updates per timed block")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--note", default="", help="what else runs on the machine, recorded")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.threads < 1:
        raise SystemExit("error: --repeats, --steps and --threads must be at least 1")
    threads = set_threads(args.threads)
    about = machine(threads, args.note)
    steps = {name: steps_for(o) for name, o in VARIANTS.items()}
    for fn in steps.values():  # warm-up (and Momentum-SAM's first buffer)
        for _ in range(3):
            fn()
    times = interleaved(
        {n: throughput(fn, args.steps, BATCH, CPU) for n, fn in steps.items()}, args.repeats
    )
    rows = []
    for name in VARIANTS:
        ref, target = REFERENCE.get(name, (None, None))
        cost = paired_ratio(times, ref, name) if ref else float("nan")
        verdict = "" if ref is None else ("meets" if cost <= target else "**misses**")
        cell = f"{cost:.3f}x {ref}" if ref else "–"
        goal = f"<= {target}x ({verdict})" if ref else "–"
        rows.append(f"| {name} | {median(times[name]):,.0f} | {cell} | {goal} |")
        print(rows[-1], flush=True)
    body = (
        f"`python benchmarks/bench_sam.py --repeats {args.repeats} --steps {args.steps} "
        f"--threads {args.threads}`. Machine: {about}\n\n"
        f"The demo's setting (MNIST-1D 1-D CNN + BatchNorm) at B={BATCH}; every variant is the "
        "engine's `optimizer_update`, fed as the training loop feeds it, timed in interleaved "
        f"blocks of {args.steps} updates. Cost = median over repeats of (reference examples/s / "
        "variant examples/s) within a repeat.\n\n"
        "| variant | examples/s (median) | cost per update | target |\n"
        "|---|---|---|---|\n" + "\n".join(rows)
    )
    write_section(TITLE, body)


if __name__ == "__main__":
    main()
