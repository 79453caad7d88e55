"""The engine against a plain hand-written PyTorch loop: same model, data, batch and steps.

Fashion-MNIST MLP 784-256-256-256-10 (real data, from the Debian package
dataset-fashion-mnist), SGD with momentum, at batch 4096 and 64. Both loops hold the data
as one tensor and batch by index; the engine's figure is its own training-only examples/s (its
per-epoch evaluation is not timed). Repeats alternate the two so a busy machine hurts both alike;
the ratio of medians goes to RESULTS.md. Targets: >= 0.95 at batch 4096, >= 0.90 at batch 64.

    python benchmarks/bench_engine.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine, write_section

from largebatch.config import load_config
from largebatch.data import DataError, TensorSplit, build_dataset
from largebatch.engine import epoch_order, global_batches, train
from largebatch.models.mlp import MLP


def config(batch: int, steps: int, data_name: str):
    return load_config(
        None,
        [
            f"data.name={data_name}",
            f"data.train_subset={batch * steps}",
            "model.name=mlp",
            "model.hidden=[256,256,256]",
            "train.epochs=1",
            f"train.global_batch_size={batch}",
            "train.eval_train=false",
            "train.progress=false",
            "optim.lr=0.01",
            f"optim.base_batch_size={batch}",
            "optim.momentum=0.9",
        ],
    )


def plain_loop(split: TensorSplit, batch: int, steps: int) -> float:
    """What a user writes by hand; returns examples/s."""
    torch.manual_seed(0)
    model = MLP(784, [256, 256, 256], 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    batches = global_batches(epoch_order(len(split), 0, 0), batch, True)[:steps]
    t0 = time.perf_counter()
    for idx in batches:
        x, y = split.x.index_select(0, idx), split.y.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss.item()  # as any loop that logs or checks its loss does
    return batch * len(batches) / (time.perf_counter() - t0)


def engine(cfg, tmp: Path, tag: str) -> float:
    result = train(cfg, tmp / tag)
    return result.summary["final"]["examples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_name = "fashion_mnist"
    try:
        build_dataset(config(64, 1, data_name).data)
    except DataError as e:
        raise SystemExit(f"this benchmark uses real Fashion-MNIST: {e}") from None
    lines = []
    for batch, steps in ((4096, 14), (64, 900)):
        cfg = config(batch, steps, data_name)
        split = build_dataset(cfg.data).train
        ours, plain = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                plain.append(plain_loop(split, batch, steps))
                ours.append(engine(cfg, Path(tmp), f"{batch}-{r}"))
        ratio = statistics.median(ours) / statistics.median(plain)
        line = (
            f"| {batch} | {steps} | {statistics.median(plain):,.0f} | "
            f"{statistics.median(ours):,.0f} | {ratio:.3f} |"
        )
        print(line, flush=True)
        lines.append(line)
    body = (
        f"Machine: {machine(args.threads)}\n\n"
        f"Fashion-MNIST MLP 784-256-256-256-10, SGD momentum 0.9, data: {data_name}; median of "
        f"{args.repeats} alternating repeats. Targets: >= 0.95 at B=4096, >= 0.90 at B=64.\n\n"
        "| batch | steps | plain loop (ex/s) | engine (ex/s) | engine / plain |\n"
        "|---|---|---|---|---|\n" + "\n".join(lines)
    )
    write_section("Engine vs plain PyTorch loop (issue 2)", body)


if __name__ == "__main__":
    main()
