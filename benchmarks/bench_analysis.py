"""Benchmark of the analysis toolkit (issue 4): Hessian-vector product cost and Lanczos vs power.

1. Cost of one Hessian-vector product (double backward) over the cost of one gradient, on the
   same batch, for Jastrzebski et al.'s Fashion-MNIST MLP 784-256-256-256-10 at a batch of 1024.
   Target: <= 3.
2. Hessian-vector products needed to reach the top Hessian eigenvalue to 1e-3 relative error,
   Lanczos vs power iteration, on that MLP after 10 epochs of training (so the spectrum has its
   trained shape: a few outliers above a bulk; an untrained network's top eigenvalue is far
   more isolated, which flatters power iteration). The reference eigenvalue comes from a long
   Lanczos run converged to 1e-10. Target: Lanczos needs >= 2x fewer.

Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/bench_analysis.py [--quick] [--no-write]

It uses real Fashion-MNIST from /usr/share/datasets/fashion-mnist when present (random data
otherwise, and says so), sets torch to 1 thread, and appends its figures to
benchmarks/RESULTS.md under "## Analysis (issue 4)" (replacing an earlier copy of that section).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from largebatch.analysis.eigen import lanczos, power_iteration
from largebatch.analysis.hvp import HessianOperator, flatten
from largebatch.config import DataConfig, ModelConfig
from largebatch.models import build_model
from largebatch.rundir import cpu_model

THREADS = 1
SECTION = "## Analysis (issue 4)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def load_data(train_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Real Fashion-MNIST training images (flattened), or random data if unavailable."""
    try:
        from largebatch.data import build_dataset

        bundle = build_dataset(
            DataConfig(name="fashion_mnist", train_subset=train_size, split_seed=0)
        )
        split = bundle.train
        x, y = split.get_batch(torch.arange(len(split)))
        return x.reshape(len(x), -1), y, f"Fashion-MNIST ({bundle.info.get('source')})"
    except Exception as e:  # noqa: BLE001 - any failure to find the data falls back, loudly
        print(f"Fashion-MNIST not available ({e}); using RANDOM data", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(train_size, 784, generator=g)
        y = torch.randint(0, 10, (train_size,), generator=g)
        return x, y, "RANDOM data (Fashion-MNIST not found)"


def build_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="mlp", hidden=[256, 256, 256]), (784,), 10)


def train_briefly(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    """Plain momentum SGD at B=64, lr 0.005 (the calibration's setting); returns seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return time.perf_counter() - start


def interleaved_times(fns: list, repeats: int) -> list[list[float]]:
    """Time each function ``repeats`` times, alternating between them, so that a slowdown of
    the shared machine hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def hvp_over_gradient(model: torch.nn.Module, batch, repeats: int) -> dict:
    x, y = batch
    params = [p for p in model.parameters() if p.requires_grad]
    op = HessianOperator(model, [batch])
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))

    def gradient() -> torch.Tensor:
        return flatten(torch.autograd.grad(F.cross_entropy(model(x), y), params))

    t_grad, t_hvp = interleaved_times([gradient, lambda: op.matvec(v)], repeats)
    pair_ratios = [h / g for g, h in zip(t_grad, t_hvp, strict=True)]
    return {
        "grad_s": statistics.median(t_grad),
        "hvp_s": statistics.median(t_hvp),
        "ratio": statistics.median(pair_ratios),
        "ratio_of_minima": min(t_hvp) / min(t_grad),
        "params": op.dim,
        "repeats": repeats,
    }


def products_to_tolerance(history: list[float], reference: float, tol: float) -> int | None:
    """First product count after which the estimate stays within ``tol`` relative error."""
    ok = [abs(h - reference) <= tol * abs(reference) for h in history]
    for i in range(len(ok)):
        if all(ok[i:]):
            return i + 1
    return None


def lanczos_vs_power(model, batches, seeds: list[int], power_max: int) -> dict:
    op = HessianOperator(model, batches)
    ref = lanczos(op.matvec, op.dim, 1, tol=1e-10, max_iter=300, generator=torch.Generator())
    reference = float(ref.eigenvalues[0])
    rows = []
    for seed in seeds:
        lz = lanczos(
            op.matvec,
            op.dim,
            1,
            tol=1e-6,
            max_iter=300,
            generator=torch.Generator().manual_seed(seed),
        )
        pw = power_iteration(
            op.matvec,
            op.dim,
            1,
            tol=1e-7,
            max_iter=power_max,
            generator=torch.Generator().manual_seed(seed),
        )
        rows.append(
            {
                "seed": seed,
                "lanczos": products_to_tolerance(lz.history, reference, 1e-3),
                "power": products_to_tolerance(pw.history, reference, 1e-3),
                "power_final": pw.history[-1],
            }
        )
    return {
        "reference": reference,
        "reference_matvecs": ref.num_matvecs,
        "reference_converged": ref.converged,
        "rows": rows,
        "samples": op.num_samples,
    }


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION in old:  # replace our own earlier section, keep everyone else's
        start = old.index(SECTION)
        nxt = old.find("\n## ", start + len(SECTION))
        old = old[:start].rstrip("\n") + ("\n" + old[nxt:] if nxt != -1 else "")
    RESULTS.write_text(old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, less training")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (10)")
    parser.add_argument(
        "--train-size", type=int, default=60000, help="training images (60000: all)"
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    epochs = 1 if args.quick else args.epochs
    train_size = 5000 if args.quick else args.train_size
    x, y, source = load_data(train_size)
    model = build_mlp()
    train_s = train_briefly(model, x, y, epochs)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    print(
        f"data: {source}; trained {epochs} epochs on {len(y)} images in {train_s:.1f} s, "
        f"train acc {100 * acc:.1f}%"
    )

    batch = (x[:1024], y[:1024])
    cost = hvp_over_gradient(model, batch, repeats=5 if args.quick else 20)
    print(
        f"(1) batch 1024, {cost['params']} params: gradient {1e3 * cost['grad_s']:.1f} ms, "
        f"HVP {1e3 * cost['hvp_s']:.1f} ms, ratio {cost['ratio']:.2f} (of minima "
        f"{cost['ratio_of_minima']:.2f}; target <= 3)"
    )

    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    cmp = lanczos_vs_power(model, [batch], seeds, power_max=300 if args.quick else 1000)
    lz = [r["lanczos"] for r in cmp["rows"]]
    pw = [r["power"] for r in cmp["rows"]]
    print(
        f"(2) top eigenvalue {cmp['reference']:.5g} (reference converged: "
        f"{cmp['reference_converged']}); HVPs to 1e-3: Lanczos {lz}, power {pw}"
    )
    ratio = None
    if all(v is not None for v in lz + pw):
        ratio = statistics.mean(pw) / statistics.mean(lz)
        print(f"    power / Lanczos = {ratio:.1f}x (target >= 2x)")

    if args.no_write:
        return 0
    lines = [
        SECTION,
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/bench_analysis.py{' --quick' if args.quick else ''}`"
        f" on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}.",
        f"Model: MLP 784-256-256-256-10 ({cost['params']} parameters), trained {epochs} epochs "
        f"of momentum SGD (B=64, lr 0.005) on {len(y)} images of {source}; train accuracy "
        f"{100 * acc:.1f}%.",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| gradient, batch 1024 (median) | {1e3 * cost['grad_s']:.1f} ms | |",
        f"| Hessian-vector product, same batch (median) | {1e3 * cost['hvp_s']:.1f} ms | |",
        f"| HVP time / gradient time (median of {cost['repeats']} interleaved pairs) "
        f"| {cost['ratio']:.2f} | <= 3 |",
        f"| HVP time / gradient time (ratio of the fastest runs) | {cost['ratio_of_minima']:.2f} "
        "| <= 3 |",
        f"| top Hessian eigenvalue (reference: Lanczos to 1e-10, {cmp['reference_matvecs']} HVPs) "
        f"| {cmp['reference']:.5g} | |",
        f"| HVPs to 1e-3 relative, Lanczos (seeds {seeds}) | {lz} | |",
        f"| HVPs to 1e-3 relative, power iteration (same seeds) | {pw} | |",
        f"| power / Lanczos | {f'{ratio:.1f}x' if ratio else 'n/a'} | >= 2x |",
        "",
        "HVPs are counted until the estimate stays within 1e-3 of the reference (the methods' own "
        "stopping rules are not used for the count); the batch is the first 1024 training images.",
    ]
    write_section("\n".join(lines))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
