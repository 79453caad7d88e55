"""Shared by the distributed tests and the scripts they run under ``torchrun``.

The scripts are started as files (``python -m torch.distributed.run ... tests/distributed/x.py``),
so this module is imported both as ``tests.distributed.ddp_helpers`` and as ``ddp_helpers``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# A tiny MNIST-1D MLP without BatchNorm; 600 examples = 480 train: 7 updates per epoch at B=64.
TINY = [
    "data.name=mnist1d",
    "data.num_samples=600",
    "model.name=mlp",
    "model.hidden=[32,32]",
    "train.epochs=3",
    "train.global_batch_size=64",
    "train.progress=false",
    "train.threads=1",
    "optim.lr=0.05",
    "optim.base_batch_size=64",
    "optim.momentum=0.9",
]
NOISY = [*TINY, "noise.alpha=1e-3"]
# A last partial batch of 33 (481 = 7 * 64 + 33): rank slices of 17 and 16 examples, cut into
# micro-batches of 16, so the ranks run different numbers of micro-batches in that update.
UNEVEN = [
    *TINY,
    "data.num_samples=700",
    "data.train_subset=481",
    "train.drop_last=false",
    "train.micro_batch_size=16",
]
# One update of a known LR: 64 training examples, one epoch, plain SGD (no momentum, no decay),
# so the parameter difference noisy - quiet is exactly -lr * sigma_0 * n.
ONE_STEP = [*TINY, "data.train_subset=64", "train.epochs=1", "optim.momentum=0"]
ONE_STEP_LR = 0.05
# With BatchNorm: per-replica statistics under DDP = Ghost BatchNorm of the per-device batch.
BATCHNORM = [
    *TINY,
    "model.name=cnn1d",
    "model.channels=8",
    "model.batchnorm=true",
    "train.epochs=2",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    # The launcher's variables must come from the launcher, never from an outer job.
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun(args: list[str], nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node=N ARGS`` on a free port, captured."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        *args,
    ]
    return subprocess.run(
        cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=HERE.parents[1]
    )
