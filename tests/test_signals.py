"""Stopping a ``largebatch train`` process from outside, as schedulers and users do.

SIGTERM (batch schedulers, ``torchrun``) and SIGINT (Ctrl-C) checkpoint the run where it stands,
record ``stopped`` and the signal, exit ``128 + signal`` and print the exact resume command; the
resumed run ends bit-identical to an uninterrupted one. A kill -9 loses at most the epoch in
flight and its lock does not block ``--resume``; a second process into a busy run directory
exits 2 naming the holder.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_stop_records import assert_same_records

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mnist1d_mlp.yaml")
# 6 epochs x 50 updates; the loss read every 7 updates, so a signal mostly lands between reads.
OVERRIDES = [
    "data.num_samples=2000",
    "train.epochs=6",
    "train.global_batch_size=32",
    "train.threads=1",
    "train.log_every_steps=7",
    "train.progress=false",
]
TOTAL_STEPS = 300


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _start(out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    overrides = [e for e in extra if "=" in e]
    flags = [e for e in extra if "=" not in e]
    cmd = [sys.executable, "-m", "largebatch", "train", CONFIG, *OVERRIDES, *overrides]
    cmd += [f"data.cache_dir={cache}", "--out", str(out), *flags]
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def _wait_for(proc: subprocess.Popen, path: Path, lines: int, timeout: float = 60.0) -> None:
    """Wait until ``path`` has ``lines`` lines (the run is under way), failing if it ended."""
    end = time.monotonic() + timeout
    while _lines(path) < lines:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the signal:\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no progress in {path} after {timeout} s")
        time.sleep(0.005)


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _assert_same_model(a: Path, b: Path) -> None:
    ma, mb = _model(a), _model(b)
    assert ma.keys() == mb.keys()
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """The uninterrupted run, in this process (one interpreter start less; the CLI runs the same
    ``train`` with the same one thread)."""
    from largebatch.config import load_config
    from largebatch.engine import train

    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = load_config(CONFIG, [*OVERRIDES, f"data.cache_dir={cache}"])
    assert train(cfg, out).status == "completed"
    return out


def _resume_command(stderr: str) -> list[str]:
    """The command the stopped run printed, as arguments for ``python -m largebatch``."""
    lines = [line for line in stderr.splitlines() if line.strip().startswith("largebatch train")]
    assert len(lines) == 1, stderr
    argv = shlex.split(lines[0].strip())
    assert argv[-1] == "--resume"
    return [sys.executable, "-m", "largebatch", *argv[1:]]


def test_sigterm_checkpoints_exits_143_and_resumes_bit_identical(tmp_path, cache, reference):
    out = tmp_path / "run"
    proc = _start(out, cache)
    _wait_for(proc, out / "steps.jsonl", 10)  # in epoch 2
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped"
    assert summary["signal"] == signal.SIGTERM
    assert 0 < summary["step"] < TOTAL_STEPS
    assert str(out / "checkpoints" / "last.pt") in stderr
    resume = _resume_command(stderr)
    done = subprocess.run(resume, env=_env(), capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    _assert_same_model(out, reference)
    assert_same_records(out, reference)


def test_second_train_into_a_busy_dir_exits_2_and_sigint_exits_130(tmp_path, cache):
    out = tmp_path / "run"
    first = _start(out, cache, "train.epochs=1000")  # still running when the second starts
    try:
        _wait_for(first, out / "steps.jsonl", 5)
        second = _start(out, cache, "train.epochs=1000")
        stdout, stderr = second.communicate(timeout=60)
        assert second.returncode == 2, stderr
        errors = [ln for ln in stderr.splitlines() if ln.startswith("largebatch train: error:")]
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0], stderr
        assert "Traceback" not in stderr
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["signal"] == signal.SIGINT
    assert "--resume" in stderr and "Traceback" not in stderr


def test_kill_9_mid_run_then_resume_is_not_blocked(tmp_path, cache, reference):
    out = tmp_path / "run"
    proc = _start(out, cache)
    _wait_for(proc, out / "metrics.jsonl", 2)  # two epochs checkpointed
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = _start(out, cache, "--resume")
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    _assert_same_model(out, reference)
    assert_same_records(out, reference)
