"""The run directory: the unit of record of one training run.

Layout::

    RUN/
      config.yaml          the fully resolved config (every default written out)
      env.json             versions, git commit, device, threads, world size, command line of the
                           first start; ``history``: each --resume (time, command, host, ...)
      data.json            what the dataset builder reported (source, counts, split manifest hash)
      metrics.jsonl        one JSON object per epoch (see ``METRIC_KEYS``)
      steps.jsonl          every ``train.log_every_steps`` updates: loss, lr, gradient norm, ...
      evals.jsonl          every ``train.eval_every_steps`` updates (if set): validation metrics
      summary.json         status (running|completed|stopped|diverged|failed), final metrics, time
      checkpoints/last.pt  the latest checkpoint (atomic; see largebatch.checkpoint)
      tensorboard/, csv/, wandb/, mlruns/, trackers.json
                           with ``train.trackers`` (see largebatch.engine.trackers)
      analysis/            what ``largebatch analyze`` writes

Analysis and reports read run directories; they never re-train.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from largebatch.checkpoint import atomic_write_bytes
from largebatch.config import (
    Config,
    config_from_dict,
    dump_config,
    read_user_yaml,
)
from largebatch.errors import UserError

METRIC_KEYS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "gap",
    "running_loss",
    "noise_variance",
    "examples_per_s",
    "epoch_time_s",
)
CHECKPOINT = Path("checkpoints") / "last.pt"


def make_out_folder(folder: Path) -> None:
    """Create the ``--out`` folder (and its parents) of any command, or raise one
    :class:`UserError` naming it and why (a file in the way, no permission, a full disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"--out {folder} cannot be made ({e.strerror or e}); choose another --out (a new or "
            "writable folder)"
        ) from None


def write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_config(run_dir: Path, cfg: Config) -> None:
    text = dump_config(cfg).encode()
    atomic_write_bytes(run_dir / "config.yaml", lambda f: f.write(text))


def read_config_dict(run_dir: Path) -> dict[str, Any]:
    """A run directory's ``config.yaml`` as nested dicts, read safely
    (:func:`~largebatch.config.read_yaml_file`: a ``!!python/...`` tag is refused, never
    constructed; an alias bomb or an oversized file is refused). A file that is not YAML, or not
    a mapping of sections, raises :class:`UserError` naming the file."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    fix = "restore it from a copy, or train the run afresh into another --out"
    raw = read_user_yaml(path, "run config", fix=fix)
    if raw is None:
        raise UserError(f"{path} is empty, not a run config; {fix}")
    if not isinstance(raw, dict):
        raise UserError(
            f"{path} holds a {type(raw).__name__}, not the mapping of sections a run config is; "
            f"{fix}"
        )
    return raw


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    raw = read_config_dict(run_dir)
    try:
        return config_from_dict(raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"
EVALS = "evals.jsonl"


def append_jsonl(path: Path, row: dict[str, Any], durable: bool = True) -> None:
    """Append one JSON line. The line is handed to the OS at once (a killed process loses
    nothing written); ``durable`` also waits for the disk (``fsync``), which survives a machine
    crash and costs milliseconds: per epoch, not per loss read."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        if durable:
            os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is redone on resume
    return rows


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Keep the rows whose ``key`` is ``<= last`` (those a checkpoint covers)."""
    if not Path(path).is_file():
        return
    rows = [r for r in read_jsonl(path) if r.get(key, 0) <= last]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write_bytes(Path(path), lambda f: f.write(data))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    append_jsonl(Path(run_dir) / METRICS, row)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS)


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Keep the metrics of epochs ``<= epochs_done`` (those the checkpoint covers)."""
    truncate_jsonl(Path(run_dir) / METRICS, "epoch", epochs_done)


def git_commit() -> dict[str, Any]:
    """The commit of the source tree largebatch is imported from (if it is a git checkout)."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    import numpy

    from largebatch._version import __version__

    env: dict[str, Any] = {
        "largebatch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world_size,
        "command": sys.argv,
        "git": git_commit(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


ENV = "env.json"


def record_environment(
    run_dir: Path, device: torch.device, world_size: int, resumed_at_step: int | None = None
) -> dict[str, Any]:
    """Write ``env.json`` on a run's first start; on each later start (``--resume``) keep the
    original and append where, when and how it was resumed to its ``history`` list."""
    path = Path(run_dir) / ENV
    env = environment(device, world_size)
    previous = None
    if path.is_file():
        try:
            previous = read_json(path)
        except (OSError, ValueError):
            previous = None  # unreadable (cut by a kill before the atomic writes existed)
    if not isinstance(previous, dict):
        env["history"] = []
        write_json(path, env)
        return env
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": env["command"],
        "hostname": env["hostname"],
        "world_size": world_size,
        "device": env["device"],
        "largebatch": env["largebatch"],
        "git": env["git"],
        "resumed_at_step": resumed_at_step or 0,
    }
    previous.setdefault("history", []).append(entry)
    write_json(path, previous)
    return previous


LOCK = ".lock"
"""The lock file of a run directory or a sweep folder."""


def hold_lock(folder: Path, busy: str) -> Any:
    """Hold an OS lock on ``folder/.lock`` for the life of the process and write this process's
    pid in it; return the open handle (keep it). The OS drops the lock when its holder dies
    (kill -9 included), so a crashed process never blocks the next one.

    ``busy``: the error when another process holds it; ``{pid}`` names the holder.
    """
    try:
        handle = open(folder / LOCK, "a+")
    except OSError as e:
        raise UserError(
            f"{folder / LOCK} cannot be opened ({e.strerror or e}); choose a writable folder"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise UserError(busy.format(pid=holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
