"""``largebatch bench``: training images/s against batch size, for a model on this machine.

For each batch size ``B`` the config's run is built as ``largebatch train`` builds it
(:func:`largebatch.engine.build_run`, ``train.global_batch_size = B``), and its optimizer
updates are timed as the training loop makes them (:class:`EngineSteps`: the epoch's order cut
into global batches, micro-batches gathered by the dataset, the LR from the schedule, one
:func:`largebatch.engine.optimizer_update` each, the loss summed on the device). After
``warmup`` updates, ``repeats`` windows of ``steps`` updates are timed (the device synchronised
at both ends); the median window gives

    images/s = B * steps / window seconds.

The device is named (the GPU's name, or the CPU model and torch threads), and the result is
written as ``bench.md`` (a markdown table), ``bench.json`` and ``bench.png`` (images/s against
``B`` on log-2 axes) in the output folder.

Example::

    largebatch bench fmnist_mlp --batch-sizes 32,64,128,256,512 --steps 20 --out runs/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from largebatch.config import Config, load_config, resolved, validate
from largebatch.data.sampling import epoch_order, global_batches, local_slice
from largebatch.distributed import DistContext
from largebatch.engine import Run, UpdateResult, build_run, optimizer_update, resolve_device
from largebatch.errors import UserError
from largebatch.gradient.base import UpdateInfo
from largebatch.plotting import log_axis_at

# MNIST-1D is generated locally: the default needs no dataset files (Fashion-MNIST does).
DEFAULT_CONFIG = "mnist1d_cnn"
DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)


class EngineSteps:
    """Optimizer updates of ``run``, fed as :func:`largebatch.engine.train` feeds them.

    Each call is one :func:`~largebatch.engine.optimizer_update` on the next global batch of the
    epoch's order (a new epoch's order when one runs out); nothing is read back to the host.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.batches: list[torch.Tensor] = []
        self.aug = torch.Generator(device=run.device).manual_seed(0)
        self.loss = torch.zeros((), dtype=torch.float64, device=run.device)

    def _next_batch(self) -> torch.Tensor:
        if self.position == len(self.batches):
            cfg = self.run.cfg
            order = epoch_order(len(self.run.data.train), cfg.train.seed, self.epoch)
            self.batches = global_batches(
                order,
                self.run.plan.global_batch_size,
                cfg.train.drop_last,
                self.run.dist.world_size,
            )
            self.epoch, self.position = self.epoch + 1, 0
        self.position += 1
        return self.batches[self.position - 1]

    def __call__(self) -> UpdateResult:
        run, batch = self.run, self._next_batch()
        micro = local_slice(batch, run.dist.rank, run.dist.world_size)
        micro_batches = micro.split(run.plan.micro_batch_size)
        info = UpdateInfo(step=self.step, lr=run.schedule(self.step))
        xs = run.data.train.iter_batches(micro_batches, run.cfg.data.augment, self.aug)
        out = optimizer_update(run.parts, xs, len(batch), info, len(micro_batches))
        self.loss += out.loss_sum
        self.step += 1
        return out


@dataclass(frozen=True)
class BenchRow:
    batch_size: int
    images_per_s: float
    """Median over the timed windows."""
    ms_per_update: float
    spread: float
    """(fastest - slowest window) / median, in images/s."""
    peak_memory_mib: float | None
    """Peak CUDA memory allocated (None on a CPU)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU model with torch's thread count."""
    from largebatch.rundir import cpu_model

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} torch thread(s))"


def batch_config(cfg: Config, batch_size: int) -> Config:
    """``cfg`` at global batch ``batch_size``; its micro-batch kept where it divides the batch."""
    micro = cfg.train.micro_batch_size
    if micro is not None and (micro > batch_size or batch_size % micro):
        micro = None
    train = dataclasses.replace(cfg.train, global_batch_size=batch_size, micro_batch_size=micro)
    out = dataclasses.replace(cfg, train=train)
    validate(out)
    return resolved(out)


def measure(run: Run, steps: int, warmup: int, repeats: int) -> BenchRow:
    """Time ``repeats`` windows of ``steps`` updates of ``run`` after ``warmup`` updates."""
    device, batch = run.device, run.plan.global_batch_size
    step = EngineSteps(run)
    run.model.train()
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(batch * steps / (time.perf_counter() - t0))
    if not math.isfinite(float(step.loss)):
        raise UserError(
            f"the training loss became non-finite at batch {batch}: the timing is of a diverged "
            "run; lower optim.lr (or pass optim.scaling=none) and bench again"
        )
    med = statistics.median(rates)
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return BenchRow(batch, med, 1e3 * batch / med, (max(rates) - min(rates)) / med, memory)


def run_bench(
    cfg: Config,
    batch_sizes: list[int],
    steps: int,
    warmup: int | None = None,
    repeats: int = 3,
    log: Any = print,
) -> tuple[list[BenchRow], torch.device]:
    """Images/s of ``cfg``'s training updates at each batch size (one process)."""
    from largebatch.plugins import prepare_config

    cfg = prepare_config(cfg)  # its plugins imported, its names checked
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training loop sets it
    if warmup is None:
        warmup = 5 if device.type == "cuda" or cfg.train.compile else 2
    rows = []
    for b in batch_sizes:
        run = build_run(batch_config(cfg, b), DistContext(), device)
        row = measure(run, steps, warmup, repeats)
        rows.append(row)
        log(f"batch {b:6d}: {row.images_per_s:12,.0f} images/s, {row.ms_per_update:9.2f} ms/update")
        del run
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, device


def describe(cfg: Config) -> str:
    m, t = cfg.model, cfg.train
    extra = [f"amp {t.amp}"]
    if t.channels_last:
        extra.append("channels_last")
    if t.compile:
        extra.append(f"torch.compile ({t.compile_mode})")
    if t.micro_batch_size:
        extra.append(f"micro-batch {t.micro_batch_size}")
    return f"{m.name} on {cfg.data.name}, {cfg.optim.name}, {', '.join(extra)}"


def markdown(rows: list[BenchRow], title: str, device: str, note: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"Device: {device}. {note}",
        "",
        "| batch | images/s | ms / update | window spread | peak CUDA memory (MiB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        memory = "-" if r.peak_memory_mib is None else f"{r.peak_memory_mib:,.0f}"
        lines.append(
            f"| {r.batch_size} | {r.images_per_s:,.0f} | {r.ms_per_update:.2f} | "
            f"{100 * r.spread:.1f}% | {memory} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows: list[BenchRow], title: str, device: str, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_axes((0.14, 0.13, 0.82, 0.74))
    xs = [r.batch_size for r in rows]
    ax.plot(xs, [r.images_per_s for r in rows], "o-", color="tab:blue")
    log_axis_at(ax, "x", xs)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    for r in rows:
        ax.annotate(
            f"{r.images_per_s:,.0f}",
            (r.batch_size, r.images_per_s),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.set_ylim(bottom=0, top=1.12 * max(r.images_per_s for r in rows))
    ax.set_xlabel("global batch size")
    ax.set_ylabel("training images / s")
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    ax.set_title(f"device: {device}", fontsize=8)
    fig.savefig(path, dpi=110)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--batch-sizes {text!r}: give positive integers, e.g. 32,64,128") from None
    if not sizes or any(s < 1 for s in sizes):
        raise UserError(f"--batch-sizes {text!r}: give positive integers, e.g. 32,64,128")
    return sorted(set(sizes))


def cmd_bench(args: argparse.Namespace) -> int:
    from largebatch.presets import resolve_preset

    if args.threads is not None and args.threads < 1:
        raise UserError(
            f"--threads {args.threads}: give the number of torch CPU threads, 1 or more (or leave "
            "it out for the config's train.threads)"
        )
    cfg = load_config(str(resolve_preset(args.config)), args.overrides)
    if args.steps < 1 or args.repeats < 1:
        raise UserError("--steps and --repeats must be at least 1")
    threads = args.threads if args.threads is not None else cfg.train.threads
    if threads is not None:
        torch.set_num_threads(threads)
    sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else list(DEFAULT_BATCH_SIZES)
    out = Path(args.out) if args.out else Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    rows, device = run_bench(cfg, sizes, args.steps, args.warmup, args.repeats)
    name = device_description(device)
    title = f"Training throughput: {describe(cfg)}"
    note = (
        f"Config {args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}; "
        f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}. Each batch: the run "
        "`largebatch train` builds, its `optimizer_update`s timed as the training loop makes "
        f"them; median of {args.repeats} windows of {args.steps} updates after warm-up."
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(markdown(rows, title, name, note))
    record = {"title": title, "device": name, "note": note, "rows": [asdict(r) for r in rows]}
    (out / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    figure(rows, title, name, out / "bench.png")
    print(f"wrote {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.png'}")
    return 0


def add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="training images/s against batch size on this machine")
    p.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_CONFIG,
        help=f"YAML config or preset name (default: {DEFAULT_CONFIG})",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.amp=bf16"
    )
    p.add_argument(
        "--batch-sizes",
        help="comma-separated global batch sizes (default: "
        + ",".join(map(str, DEFAULT_BATCH_SIZES))
        + ")",
    )
    p.add_argument("--steps", type=int, default=20, help="updates per timed window (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median counts")
    p.add_argument("--warmup", type=int, help="untimed updates first (default 2 CPU, 5 GPU)")
    p.add_argument("--threads", type=int, help="torch threads on a CPU (default: the config's)")
    p.add_argument("--out", help="output folder (default: runs/bench-<time>)")
    p.set_defaults(func=cmd_bench)
