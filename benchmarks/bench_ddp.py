"""What DDP's wrapping and gradient all-reduce cost per step, at world size 1.

The Fashion-MNIST MLP 784-256-256-256-10 (on random data: only the shapes matter), SGD with
momentum, at batches 64 and 4096. Each step is zero_grad, forward, cross-entropy, backward and
optimizer step, timed three ways on identical copies of the model:

- plain: the bare module;
- DDP: ``DistributedDataParallel`` over a world-size-1 process group, which still runs the
  reducer (gradient buckets, the all-reduce call, copying back) on every backward;
- DDP no_sync: the same wrapper inside ``no_sync()``, i.e. the wrapper without communication
  (what the engine's accumulation micro-batches cost).

gloo on the CPU, and NCCL on the GPU when there is one. The script creates its world-size-1
process group itself (MASTER_ADDR=127.0.0.1, a free port); run it with plain ``python``:

    python benchmarks/bench_ddp.py [--repeats 5] [--threads 1]

Short blocks of steps of the three variants interleave, in a rotating order, so a busy machine
hurts all alike; the medians over blocks go to RESULTS.md, with the load average seen.
At world size 1 this is the fixed cost of the DDP machinery; with more ranks the all-reduce also
moves 2 * (W - 1) / W of the gradient bytes per rank over the interconnect (ring all-reduce).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from common import machine, write_section
from torch import nn

from largebatch.models.mlp import MLP

BATCHES = ((64, 100), (4096, 5))  # (batch, timed steps per block)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_world_of_one(backend: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def make_model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return MLP(784, [256, 256, 256], 10).to(device)


def time_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, no_sync: bool = False
) -> float:
    """Seconds per step, after two warm-up steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    context = model.no_sync if no_sync else contextlib.nullcontext
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with context():
            F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def bench(backend: str, device: torch.device, repeats: int) -> list[str]:
    init_world_of_one(backend)
    try:
        plain = make_model(device)
        ddp = nn.parallel.DistributedDataParallel(
            make_model(device), device_ids=[device.index] if device.type == "cuda" else None
        )
        lines = []
        for batch, steps in BATCHES:
            steps = steps * 10 if device.type == "cuda" else steps
            g = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 784, generator=g).to(device)
            y = torch.randint(0, 10, (batch,), generator=g).to(device)
            variants = [("plain", plain, False), ("ddp", ddp, False), ("no_sync", ddp, True)]
            times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
            for _ in range(repeats):
                for name, model, no_sync in variants:
                    times[name].append(time_steps(model, x, y, steps, no_sync))
                variants = variants[1:] + variants[:1]  # rotate: none always runs first
            med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            low = {k: 1e3 * min(v) for k, v in times.items()}
            cells = [f"{med[k]:.3f} ({low[k]:.3f})" for k in ("plain", "ddp", "no_sync")]
            line = (
                f"| {backend} | {device.type} | {batch} | {steps} x {repeats} | "
                + " | ".join(cells)
                + f" | {med['ddp'] / med['plain']:.3f} ({low['ddp'] / low['plain']:.3f}) | "
                f"{med['ddp'] - med['plain']:+.3f} ({low['ddp'] - low['plain']:+.3f}) |"
            )
            print(line, flush=True)
            lines.append(line)
        return lines
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed blocks per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    lines = bench("gloo", torch.device("cpu"), args.repeats)
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        lines += bench("nccl", torch.device("cuda", 0), args.repeats)
    else:
        print("no GPU here: the NCCL rows are left out")
    numel = sum(p.numel() for p in make_model(torch.device("cpu")).parameters())
    body = (
        f"Machine: {machine(args.threads)}\n\n"
        f"MLP 784-256-256-256-10 ({numel:,} parameters: {4 * numel / 2**20:.2f} MiB of float32 "
        "gradient all-reduced per step), SGD momentum 0.9, random data; world size 1; ms per step, "
        "median (minimum) over "
        f"{args.repeats} interleaved blocks. Load average (1 min) before / after: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other jobs "
        "share this machine; differences under ~10% are noise). *DDP no_sync*: the wrapper "
        "inside `no_sync()` (no all-reduce), what an accumulation micro-batch costs. This is the "
        "fixed cost of the machinery: at world size W > 1 the all-reduce also moves the gradient "
        "between devices."
        + ("" if torch.cuda.is_available() else " No GPU on this machine: no NCCL rows.")
        + "\n\n"
        "| backend | device | batch | steps x blocks | plain (ms) | DDP (ms) | DDP no_sync (ms) | "
        "DDP / plain | DDP - plain (ms) |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines)
    )
    write_section("DDP communication overhead (issue 6)", body)


if __name__ == "__main__":
    main()
