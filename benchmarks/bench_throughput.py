"""Training images/s against batch size, beside the data pipeline's images/s alone (issue 5).

For each batch size: a pool of synthetic uint8 images held on the device (as the decode cache
holds a dataset such as Caltech101 there), batched by random indices and passed through the same
device-side augmentation as training (:class:`largebatch.data.transforms.ImageSplit`: CIFAR
pad-4 crop + flip for the CIFAR ResNets, else a random resized crop + flip from images stored at
``stored_resolution(size)``; then normalise). Two figures per batch:

- train: the engine's update, :func:`largebatch.engine.optimizer_update` (augment, forward under
  bf16 autocast if asked, cross-entropy, backward, SGD momentum step; the loss stays on the
  device, as in the training loop), timed after warm-up steps. The model is built by the
  registry and compiled with ``torch.compile`` where the setting asks, as
  :func:`largebatch.engine.build_run` does; the data are a synthetic pool, not a config's
  dataset, so the ``UpdateParts`` are made here rather than by ``build_run``;
- plain (``--plain``, on by default on a GPU): the hand-written reference step on a copy of the
  same model, timed in the same windows' alternation;
- pipeline: the augmentation alone (gather + augment + normalise, no model) at the same batch.

Both run on the same device one after the other, so the augmentation's share of a training step
is train / pipeline; above one half, loading limits, else compute does. On a GPU every timing
window ends with ``torch.cuda.synchronize``.

Default on a CPU: ResNet-20 at 32 px (batches 32..256) and ResNet-18 at 64 px (16, 32, 64). On a
GPU (or with ``--gpu-preset``): ResNet-50 at 224 px, bf16 autocast, channels_last, eager at batch
128 (target >= 3,400 images/s on one H100) and ``torch.compile``d at batch 256 (>= 5,000). The
results go to ``benchmarks/RESULTS.md``, one subsection per kind of device (a CPU run keeps the
GPU figures).

    python benchmarks/bench_throughput.py                      # the default run for the device
    python benchmarks/bench_throughput.py --model resnet56 --image-size 32 --batches 64,128
    python benchmarks/bench_throughput.py --gpu-preset
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import sys
import time
from dataclasses import dataclass, field

import torch
from bench_data import timed
from common import RESULTS, PlainSteps, interleaved, machine, throughput, write_section

from largebatch.config import ModelConfig
from largebatch.data import transforms as T
from largebatch.data.image_folder import stored_resolution
from largebatch.engine import UpdateParts, optimizer_update
from largebatch.gradient.base import TransformChain, UpdateInfo
from largebatch.models import build_model

TITLE = "Training throughput vs batch size (issue 5)"
GPU_TARGETS = {False: 3400.0, True: 5000.0}  # ResNet-50 224 px bf16: eager, compiled (one H100)
CIFAR_MODELS = ("resnet20", "resnet56")
CALTECH101_IMAGES = 9144


@dataclass
class Setting:
    model: str
    image_size: int
    batches: list[int]
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    rows: list[tuple[int, float, float, float | None]] = field(default_factory=list)

    @property
    def cifar(self) -> bool:
        return self.model in CIFAR_MODELS

    def describe(self) -> str:
        aug = (
            "CIFAR pad-4 crop + flip"
            if self.cifar
            else f"random resized crop from {stored_resolution(self.image_size)} px + flip"
        )
        return (
            f"{self.model} at {self.image_size} px, {aug}, amp {self.amp}, "
            f"{'channels_last' if self.channels_last else 'NCHW'}"
            f"{', torch.compile' if self.compile else ', eager'}"
        )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_split(s: Setting, pool: int, device: torch.device) -> T.ImageSplit:
    """``pool`` random uint8 images on ``device`` with the training augmentation of ``s``."""
    side = s.image_size if s.cifar else stored_resolution(s.image_size)
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(
        0, 256, (pool, 3, side, side), generator=g, device=device, dtype=torch.uint8
    )
    classes = 10 if s.cifar else 101
    labels = torch.randint(0, classes, (pool,), generator=g, device=device)
    if s.cifar:
        return T.ImageSplit(
            images, labels, T.CIFAR10_MEAN, T.CIFAR10_STD, T.cifar_train_transform()
        )
    return T.ImageSplit(
        images,
        labels,
        T.IMAGENET_MEAN,
        T.IMAGENET_STD,
        T.imagenet_train_transform(s.image_size),
    )


def measure(
    s: Setting, batch: int, split: T.ImageSplit, device: torch.device, args: argparse.Namespace
) -> tuple[float, float, float | None]:
    """(engine images/s, pipeline-alone images/s, plain-loop images/s or None) at one batch."""
    torch.manual_seed(0)
    classes = 10 if s.cifar else 101
    model = build_model(ModelConfig(name=s.model), (3, s.image_size, s.image_size), classes)
    model = model.to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model) if args.plain else None

    def sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True
        )

    compiled = torch.compile(model) if s.compile else model
    parts = UpdateParts(compiled, sgd(model), TransformChain([]), 1, s.amp, s.channels_last)
    aug = torch.Generator(device=device).manual_seed(1)
    order = torch.Generator().manual_seed(2)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        return split.get_batch(torch.randint(0, len(split), (batch,), generator=order), True, aug)

    def step() -> None:
        optimizer_update(parts, [next_batch()], batch, UpdateInfo(0, 0.01))

    plain = None
    if reference is not None:
        ref = torch.compile(reference) if s.compile else reference
        plain = PlainSteps(ref, sgd(reference), next_batch, False, s.amp, s.channels_last)

    def steps(fn, n: int):
        def run() -> None:
            for _ in range(n):
                fn()
            sync(device)

        return run

    def pipeline(n: int):
        def run() -> None:
            for _ in range(n):
                next_batch()
            sync(device)

        return run

    model.train()
    variants = {"engine": step} if plain is None else {"engine": step, "plain": plain}
    for fn in variants.values():
        steps(fn, args.warmup)()
    # Windows of the variants alternate; the best window of each counts.
    rates = interleaved(
        {k: throughput(fn, args.steps, batch, device) for k, fn in variants.items()}, args.repeats
    )
    pipeline(2)()
    n_pipe = max(args.steps, 10)
    t_pipe = timed(pipeline(n_pipe), 3)
    plain_rate = max(rates["plain"]) if "plain" in rates else None
    return max(rates["engine"]), batch * n_pipe / t_pipe, plain_rate


def table(s: Setting, target: float | None) -> str:
    plain = any(r[3] is not None for r in s.rows)
    head = "| batch | train, engine update (images/s) | pipeline alone (images/s) | "
    head += "augment share of step | limited by |"
    head += " plain loop (images/s) | engine / plain |" if plain else ""
    lines = [f"**{s.describe()}**", "", head, "|---:" * (7 if plain else 5) + "|"]
    for batch, train, pipe, ref in s.rows:
        share = train / pipe
        limit = "data (augmentation)" if share > 0.5 else "compute"
        line = f"| {batch} | {train:,.0f} | {pipe:,.0f} | {share:.1%} | {limit} |"
        if plain:
            line += " - | - |" if ref is None else f" {ref:,.0f} | {train / ref:.3f} |"
        lines.append(line)
    if target is not None and s.rows:
        best_batch, best = max(((r[0], r[1]) for r in s.rows), key=lambda r: r[1])
        verdict = "meets" if best >= target else "falls short of"
        kind = "torch.compile" if s.compile else "eager"
        lines += [
            "",
            f"Best: {best:,.0f} images/s at batch {best_batch}, which {verdict} the target of "
            f"{target:,.0f} images/s ({kind}; one H100).",
        ]
    return "\n".join(lines)


def target(s: Setting, gpu: bool) -> float | None:
    """The issue's figures apply to ResNet-50 at 224 px in bf16 on a GPU only."""
    if gpu and s.model == "resnet50" and s.image_size == 224 and s.amp == "bf16":
        return GPU_TARGETS[s.compile]
    return None


def gpu_preset(batches: list[int] | None) -> list[Setting]:
    """ResNet-50, 224 px, bf16, channels_last: eager at 128, compiled at 256 (issue 9)."""
    return [
        Setting("resnet50", 224, batches or [128], "bf16", True),
        Setting("resnet50", 224, batches or [256], "bf16", True, compile=True),
    ]


def settings(args: argparse.Namespace, device: torch.device) -> list[Setting]:
    batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    if args.gpu_preset:
        return gpu_preset(batches)
    if args.model is None:
        if device.type == "cuda" and batches is None and args.image_size is None:
            return gpu_preset(None)
        if batches is None and args.image_size is None:
            amp, cl = args.amp, args.channels_last
            return [
                Setting("resnet20", 32, [32, 64, 128, 256], amp, cl),
                Setting("resnet18", 64, [16, 32, 64], amp, cl),
            ]
        args.model = "resnet20"
    size = args.image_size or (32 if args.model in CIFAR_MODELS else 224)
    batches = batches or [32, 64, 128, 256]
    return [Setting(args.model, size, batches, args.amp, args.channels_last, args.compile)]


def subsection_of(section: str, heading: str, body: str) -> str:
    """The section's text with its ``### heading`` subsection replaced by (or given) ``body``."""
    parts = re.split(r"(?m)^(?=### )", section)
    intro, subs = parts[0], [p for p in parts[1:] if p.strip()]
    new = f"### {heading}\n\n{body.strip()}\n"
    for i, p in enumerate(subs):
        if p.splitlines()[0] == f"### {heading}":
            subs[i] = new
            break
    else:
        subs.append(new)
    return intro.strip() + "\n\n" + "\n\n".join(p.strip() for p in subs) + "\n"


def record(body: str, heading: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    m = re.search(rf"(?ms)^## {re.escape(TITLE)}\n(.*?)(?=^## |\Z)", text)
    intro = (
        "`python benchmarks/bench_throughput.py`: the engine's `optimizer_update` (device-side "
        "augmentation from a uint8 pool held on the device, forward, backward, SGD momentum) "
        "against the same augmentation alone, at each batch size. 'augment share of step' = "
        "train / pipeline: the fraction of a step spent making the batch (above 50%: loading "
        "limits)."
    )
    section = m.group(1) if m else intro + "\n"
    write_section(TITLE, subsection_of(section, heading, body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="registry name (default: per device)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=None, help="default 2 (CPU), 5 (GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--plain",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the hand-written reference loop (default: on a GPU only)",
    )
    parser.add_argument(
        "--gpu-preset",
        action="store_true",
        help="ResNet-50, 224 px, bf16, channels_last: eager B=128, compiled B=256",
    )
    parser.add_argument("--pool", type=int, default=None, help="images held on the device")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.gpu_preset and device.type != "cuda":
        raise SystemExit("--gpu-preset needs a CUDA device")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.warmup is None:
        args.warmup = 5 if device.type == "cuda" else 2
    if args.plain is None:
        args.plain = device.type == "cuda"

    runs = settings(args, device)
    t_all = time.perf_counter()
    for s in runs:
        pool = args.pool or (
            CALTECH101_IMAGES if device.type == "cuda" else max(1024, 2 * max(s.batches))
        )
        split = make_split(s, pool, device)
        print(f"{s.describe()}; pool of {pool} images on {device}", flush=True)
        for batch in s.batches:
            train, pipe, plain = measure(s, batch, split, device, args)
            s.rows.append((batch, train, pipe, plain))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(
                f"  batch {batch:4d}: train {train:9,.0f} images/s, "
                f"pipeline alone {pipe:11,.0f} images/s ({train / pipe:.1%} of a step)"
                + ("" if plain is None else f", plain loop {plain:9,.0f} images/s"),
                flush=True,
            )
        del split
    elapsed = time.perf_counter() - t_all

    gpu = device.type == "cuda"
    command = "python benchmarks/bench_throughput.py " + shlex.join(sys.argv[1:])
    notes = (
        f"Machine: {machine(args.threads)}\n\n"
        f"`{command.strip()}`: {args.warmup} warm-up steps, then the best of {args.repeats} "
        f"window(s) of {args.steps} steps (engine and plain windows alternating); the pipeline "
        "alone is the best of 3 windows of "
        f"{max(args.steps, 10)} batches. SGD momentum 0.9, synthetic images and labels "
        f"(10 classes for the CIFAR ResNets, 101 otherwise); whole run {elapsed:.0f} s."
    )
    if gpu:
        notes += (
            f" Pool of {args.pool or CALTECH101_IMAGES} uint8 images on the GPU (Caltech101's "
            "size), augmented there; cudnn.benchmark on (as the engine sets it for CUDA runs)."
        )
    else:
        notes += (
            f" The CPU is shared with other jobs: expect run-to-run spread. torch threads fixed "
            f"at {args.threads}."
        )
    body = notes + "\n\n" + "\n\n".join(table(s, target(s, gpu)) for s in runs)
    print("\n" + body)
    if not args.no_write:
        record(body, "GPU" if gpu else "CPU")


if __name__ == "__main__":
    main()
