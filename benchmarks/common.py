"""Shared by the benchmark scripts: the engine's update as the training loop runs it, the plain
hand-written reference step, interleaved timing, and RESULTS.md sections that name the machine.

Every benchmark times :func:`largebatch.engine.optimizer_update` -- the step users run -- on a
run built by :func:`largebatch.engine.build_run` from a config where the data allow it, fed by
:class:`largebatch.experiments.bench.EngineSteps` as the training loop feeds it. A plain
PyTorch loop stays only as the reference, timed in the same process, its repetitions alternating
with the engine's (:func:`interleaved`), so a busy machine slows both alike; medians are reported.
"""

from __future__ import annotations

import copy
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.config import Config, load_config, resolved
from largebatch.data.sampling import epoch_order, global_batches
from largebatch.distributed import DistContext
from largebatch.engine import Run, build_run
from largebatch.experiments.bench import EngineSteps  # noqa: F401  (the benchmarks import it from here)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
FMNIST_MLP = ROOT / "configs" / "fmnist_mlp.yaml"


# ----------------------------------------------------------------------------------------------
# The machine


def set_threads(threads: int) -> int:
    """Fix torch's intra-op threads (recorded with every result) and return the number set."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU model."""
    from largebatch.rundir import cpu_model

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def machine(threads: int | None = None, note: str = "") -> str:
    """One line naming the machine: CPU model, cores, torch threads, versions, GPU, date, load."""
    from largebatch.rundir import cpu_model

    threads = torch.get_num_threads() if threads is None else threads
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = os.getloadavg()[0]
    line = (
        f"{cpu_model()}, {os.cpu_count()} cores, {threads} torch thread(s) "
        f"(torch.set_num_threads), torch {torch.__version__}, GPU: {gpu}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}, "
        f"load average (1 min) at the start {load:.2f}"
    )
    return line + (f". {note}" if note else "")


# ----------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls (the device synchronised at both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call every variant's block once per repeat, alternating the variants and rotating which
    goes first, so that machine noise hits all of them; each block returns its own figure."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name].append(variants[name]())
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repeats of ``a / b`` within the same repeat: the blocks of one repeat ran
    back to back, so a slow spell of the machine cancels out of each ratio."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


# ----------------------------------------------------------------------------------------------
# The engine's step and the plain reference


def fmnist_config(batch: int, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """``configs/fmnist_mlp.yaml`` (the F-MNIST MLP 784-256-256-256-10, SGD momentum 0.9) at
    global batch ``batch`` with the learning rate given at that batch (no scaling)."""
    return load_config(
        FMNIST_MLP,
        [
            f"train.global_batch_size={batch}",
            f"optim.base_batch_size={batch}",
            "train.threads=null",  # the benchmark sets and records the threads itself
            *overrides,
        ],
    )


def build_cpu_run(cfg: Config, device: str = "cpu") -> Run:
    """The run ``largebatch train`` would build from ``cfg`` in a single process."""
    return build_run(resolved(cfg), DistContext(), torch.device(device))


class PlainSteps:
    """The reference a user writes by hand: gather the batch, ``zero_grad``, forward (bf16
    autocast if asked), mean cross-entropy, ``backward``, ``step``; with ``read_loss`` the loss is
    read back every step (``loss.item()``), as a loop that logs or checks each loss does."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        get_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        read_loss: bool = False,
        amp: str = "none",
        channels_last: bool = False,
    ) -> None:
        self.model, self.optimizer, self.get_batch = model, optimizer, get_batch
        self.read_loss, self.amp, self.channels_last = read_loss, amp, channels_last

    def __call__(self) -> None:
        x, y = self.get_batch()
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.amp == "bf16"):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        if self.read_loss:
            loss.item()


def plain_sgd(model: torch.nn.Module, run: Run) -> torch.optim.SGD:
    """One-group torch SGD with the run's scaled LR, momentum and weight decay."""
    o = run.cfg.optim
    return torch.optim.SGD(
        model.parameters(),
        lr=run.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        foreach=True,
    )


def plain_like(run: Run, read_loss: bool = False) -> PlainSteps:
    """A plain loop on a copy of ``run``'s model (same weights), SGD with the run's momentum,
    over the run's training data in the same epoch order."""
    model = copy.deepcopy(run.model)
    if run.cfg.train.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    optimizer = plain_sgd(model, run)
    split, b = run.data.train, run.plan.global_batch_size
    state = {"batches": [], "i": 0, "epoch": 0}

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        if state["i"] == len(state["batches"]):
            order = epoch_order(len(split), run.cfg.train.seed, state["epoch"])
            state.update(batches=global_batches(order, b, True), i=0, epoch=state["epoch"] + 1)
        idx = state["batches"][state["i"]]
        state["i"] += 1
        return split.get_batch(idx)

    return PlainSteps(
        model, optimizer, get_batch, read_loss, run.cfg.train.amp, run.cfg.train.channels_last
    )


def throughput(step: Callable[[], object], calls: int, examples: int, device: torch.device):
    """A block for :func:`interleaved`: ``calls`` steps of ``examples`` each, as examples/s."""

    def block() -> float:
        return examples / per_call(step, calls, device)

    return block


# ----------------------------------------------------------------------------------------------
# RESULTS.md


def write_section(title: str, body: str, replaces: str | None = None) -> None:
    """Replace (or append) the section ``## title`` of RESULTS.md, leaving the others alone;
    a section titled ``replaces`` (an older title of the same section) gives way to it."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if replaces and not pattern.search(text):
        pattern = re.compile(rf"^## {re.escape(replaces)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def read_section(title: str) -> str | None:
    """The body of ``## title`` in RESULTS.md, or None."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    m = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text)
    return m.group(1) if m else None
