"""What the gradient noise costs.

(a) The transform against ``torch.randn`` of the same number of elements alone, for the
    Fashion-MNIST MLP (0.33M parameters) and ResNet-50's parameter shapes (25.6M): on a CPU,
    drawing normal numbers is the whole cost, so the target is at most 1.15x.
(b) One training step (forward, backward, noise, SGD step) with noise over without, for the MLP
    at batch 4096 (target < 1.05) and batch 64 (reported).
(c) On a GPU (when present): the noise on ResNet-50's parameters as a share of a bf16 training
    step at batch 128 (target < 1%).

Repeats alternate the variants; medians; results go to RESULTS.md.

    python benchmarks/bench_noise.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine, write_section

from largebatch import GradientNoise
from largebatch.config import ModelConfig
from largebatch.models import build_model
from largebatch.models.mlp import MLP


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, inner: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / inner


def bench_transform(model, device, repeats: int, inner: int) -> tuple[float, float, int]:
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.zeros_like(p)
    noise = GradientNoise(params, alpha=1e-5, seed=0)
    n = noise.numel
    gen = torch.Generator(device=device).manual_seed(0)
    noise()  # warm-up
    torch.randn(n, device=device, generator=gen)
    ours, ref = [], []
    for _ in range(repeats):
        ref.append(timed(lambda: torch.randn(n, device=device, generator=gen), device, inner))
        ours.append(timed(noise, device, inner))
    return statistics.median(ours), statistics.median(ref), n


def bench_step(batch: int, repeats: int, inner: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = MLP(784, [256, 256, 256], 10)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    noise = GradientNoise(model.parameters(), alpha=1e-5, seed=0)

    def step(with_noise: bool):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if with_noise:
            noise()
        opt.step()

    step(True)
    step(False)
    on, off = [], []
    for _ in range(repeats):
        off.append(timed(lambda: step(False), torch.device("cpu"), inner))
        on.append(timed(lambda: step(True), torch.device("cpu"), inner))
    return statistics.median(on), statistics.median(off)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    rows_a = []
    models = {
        "F-MNIST MLP": MLP(784, [256, 256, 256], 10),
        "ResNet-50 shapes": build_model(ModelConfig(name="resnet50"), (3, 224, 224), 1000),
    }
    for name, model in models.items():
        inner = 50 if name.startswith("F-MNIST") else 3
        ours, ref, n = bench_transform(model, cpu, args.repeats, inner)
        rows_a.append(f"| {name} | {n:,} | {1e3 * ref:.3f} | {1e3 * ours:.3f} | {ours / ref:.3f} |")
        print(rows_a[-1], flush=True)
    rows_b = []
    for batch, inner in ((4096, 5), (64, 50)):
        on, off = bench_step(batch, args.repeats, inner)
        rows_b.append(f"| {batch} | {1e3 * off:.3f} | {1e3 * on:.3f} | {on / off:.3f} |")
        print(rows_b[-1], flush=True)
    body = (
        f"Machine: {machine(args.threads)}\n\n"
        f"(a) Noise transform vs `torch.randn` of the same size (median of {args.repeats}); "
        "target <= 1.15x.\n\n"
        "| parameters of | elements | randn (ms) | noise transform (ms) | ratio |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows_a) + "\n\n"
        "(b) F-MNIST MLP training step with noise over without; target < 1.05 at batch 4096.\n\n"
        "| batch | step without (ms) | step with noise (ms) | ratio |\n|---|---|---|---|\n"
        + "\n".join(rows_b)
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        model = build_model(ModelConfig(name="resnet50"), (3, 224, 224), 1000).to(gpu)
        model = model.to(memory_format=torch.channels_last)
        ours, ref, n = bench_transform(model, gpu, args.repeats, 20)
        x = torch.randn(128, 3, 224, 224, device=gpu).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (128,), device=gpu)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        t_step = statistics.median(timed(step, gpu, 10) for _ in range(args.repeats))
        body += (
            f"\n\n(c) GPU {torch.cuda.get_device_name(0)}: ResNet-50 noise {1e3 * ours:.3f} ms, "
            f"bf16 training step at batch 128 {1e3 * t_step:.2f} ms: "
            f"{100 * ours / t_step:.2f}% of a step (target < 1%)."
        )
    write_section("Gradient noise cost (issue 3)", body)


if __name__ == "__main__":
    main()
