"""What DDP's wrapping and gradient all-reduce cost in the engine's update, at world size 1.

``configs/fmnist_mlp.yaml`` (F-MNIST MLP 784-256-256-256-10, SGD momentum 0.9, real data) at
batches 64 and 4096, built by :func:`largebatch.engine.build_run`. Each variant is the engine's
:func:`~largebatch.engine.optimizer_update`, fed as the training loop feeds it
(:class:`largebatch.experiments.bench.EngineSteps`), on identical copies of the model:

- engine: the run as ``largebatch train`` builds it in one process (no DDP);
- engine DDP: the same update with the model in ``DistributedDataParallel`` over a world-size-1
  process group (``UpdateParts(ddp=True)``, what a ``torchrun`` rank runs), which still runs the
  reducer (gradient buckets, the all-reduce call, copying back) on every update;
- engine DDP k=4: the same with 4 micro-batches per update, so three backwards run inside
  ``no_sync()`` and the last all-reduces (the engine's accumulation path);
- plain: the hand-written reference loop on the bare model.

(At world size 1 ``build_run`` does not wrap the model, so the DDP variants build their
``UpdateParts`` by hand from the run's model, optimizer settings and chain.) gloo on the CPU, NCCL
on the GPU when there is one. The script creates its process group itself (MASTER_ADDR=127.0.0.1,
a free port): run it with plain ``python``:

    python benchmarks/bench_ddp.py [--repeats 15] [--threads 1] [--note TEXT]

Blocks of the variants interleave (rotating order); medians over blocks go to RESULTS.md. With
more ranks the all-reduce also moves 2 (W - 1) / W of the gradient bytes per rank (ring).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import socket

import torch
import torch.distributed as dist
from common import (
    EngineSteps,
    build_cpu_run,
    fmnist_config,
    interleaved,
    machine,
    median,
    plain_like,
    plain_sgd,
    set_threads,
    throughput,
    write_section,
)
from torch import nn

from largebatch.data.sampling import plan_batches
from largebatch.engine import Run, UpdateParts

TITLE = "DDP overhead in the engine's update (issue 9)"
BATCHES = ((64, 100), (4096, 5))  # (batch, updates per timed block)
VARIANTS = ("plain", "engine", "ddp", "ddp_k4")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_world_of_one(backend: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def ddp_run(run: Run, accumulation: int) -> Run:
    """``run`` with its update going through a DDP wrapper of a copy of its model."""
    model = copy.deepcopy(run.model)
    device = next(model.parameters()).device
    wrapped = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    optimizer = plain_sgd(model, run)
    parts = dataclasses.replace(run.parts, model=wrapped, optimizer=optimizer, ddp=True)
    b = run.plan.global_batch_size
    plan = plan_batches(b, b // accumulation, 1)
    assert isinstance(parts, UpdateParts)
    return dataclasses.replace(run, model=model, optimizer=optimizer, parts=parts, plan=plan)


def bench(backend: str, device: torch.device, repeats: int) -> list[str]:
    init_world_of_one(backend)
    try:
        lines = []
        for batch, steps in BATCHES:
            steps = steps * 10 if device.type == "cuda" else steps
            run = build_cpu_run(fmnist_config(batch, [f"train.device={device}"]), str(device))
            steppers = {
                "plain": plain_like(run),
                "engine": EngineSteps(run),
                "ddp": EngineSteps(ddp_run(run, 1)),
                "ddp_k4": EngineSteps(ddp_run(run, 4)),
            }
            for step in steppers.values():
                for _ in range(3):
                    step()
            blocks = {k: throughput(f, steps, batch, device) for k, f in steppers.items()}
            ms = {k: 1e3 * batch / median(v) for k, v in interleaved(blocks, repeats).items()}
            cells = " | ".join(f"{ms[k]:.3f}" for k in VARIANTS)
            line = (
                f"| {backend} | {device.type} | {batch} | {steps} x {repeats} | {cells} | "
                f"{ms['engine'] / ms['plain']:.3f} | {ms['ddp'] / ms['engine']:.3f} | "
                f"{ms['ddp'] - ms['engine']:+.3f} |"
            )
            print(line, flush=True)
            lines.append(line)
        return lines
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed blocks per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--note", default="", help="what else runs on the machine, recorded")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    about = machine(threads, args.note)
    lines = bench("gloo", torch.device("cpu"), args.repeats)
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        lines += bench("nccl", torch.device("cuda", 0), args.repeats)
    else:
        print("no GPU here: the NCCL rows are left out")
    body = (
        f"`python benchmarks/bench_ddp.py --repeats {args.repeats} --threads {args.threads}`. "
        f"Machine: {about}; load average (1 min) at the end {os.getloadavg()[0]:.2f}\n\n"
        "`configs/fmnist_mlp.yaml` (335,114 parameters: 1.28 MiB of float32 gradient "
        "all-reduced per update), world size 1; ms per update, median over "
        f"{args.repeats} interleaved blocks. *engine*: `optimizer_update` of the run `build_run` "
        "makes; *DDP*: the same update through a world-size-1 DDP wrapper; *DDP k=4*: 4 "
        "micro-batches, three in `no_sync()`; *plain*: the hand-written loop. At world size "
        "W > 1 the all-reduce also moves the gradient between devices."
        + ("" if torch.cuda.is_available() else " No GPU on this machine: no NCCL rows.")
        + "\n\n"
        "| backend | device | batch | updates x blocks | plain (ms) | engine (ms) | "
        "engine DDP (ms) | engine DDP k=4 (ms) | engine / plain (time) | DDP / engine | "
        "DDP - engine (ms) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines)
    )
    write_section(TITLE, body, replaces="DDP communication overhead (issue 6)")


if __name__ == "__main__":
    main()
