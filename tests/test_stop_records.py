"""A stop at any update, then ``--resume``: every record equals the uninterrupted run's.

The stop is requested at a chosen update through the loop's own stop flag (what SIGTERM and
SIGINT set), so the update is exact: between two loss reads, at a read, at an epoch's last update,
at an epoch's first. The records compared are every file of the run directory the engine writes:
the checkpoint's tensors, ``steps.jsonl``, ``metrics.jsonl``, ``evals.jsonl`` and the finals of
``summary.json``; only wall-clock fields (times, examples per second) may differ. A real SIGTERM
and a real kill -9 through the CLI are in ``tests/test_signals.py``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from largebatch.checkpoint import load_checkpoint
from largebatch.config import load_config
from largebatch.engine import loop, train

# 480 training examples in batches of 64: 8 updates an epoch (the last one short), 3 epochs.
# The loss is read every 3 updates (3, 6, 8 | 9, 12, 15, 16 | ...) and at each epoch's end;
# evaluated every 5 updates: reads and evaluations fall mid-epoch.
OVERRIDES = [
    "train.epochs=3",
    "train.log_every_steps=3",
    "train.eval_every_steps=5",
    "train.drop_last=false",
    "train.threads=1",
]
STEPS_PER_EPOCH = 8
TIMING = ("examples_per_s", "epoch_time_s", "wall_time_s", "time_s", "elapsed_s")


def _config(tiny: list[str], *extra: str):
    return load_config(None, [*tiny, *OVERRIDES, *extra])


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _untimed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMING}
    return obj


def _finals(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    drop = ("message", "signal", "resumed", "history")
    return _untimed({k: v for k, v in summary.items() if k not in drop})


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a checkpoint, by its path (model, optimizer, noise, SWA)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out |= _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out |= _tensors(v, f"{prefix}/{i}")
    return out


def assert_same_records(a: Path, b: Path) -> None:
    for name in ("steps.jsonl", "metrics.jsonl", "evals.jsonl"):
        assert _jsonl(a / name) == _jsonl(b / name), name
    assert _finals(a) == _finals(b)
    ta = _tensors(load_checkpoint(a / "checkpoints" / "last.pt"))
    tb = _tensors(load_checkpoint(b / "checkpoints" / "last.pt"))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def _stop_at(monkeypatch: pytest.MonkeyPatch, update: int, signum: int) -> None:
    """Raise the stop flag right after update ``update`` (1-based), as the signal handler does."""
    calls = {"n": 0}

    def poll(self: loop.StopFlag) -> None:
        calls["n"] += 1
        if calls["n"] == update:
            self.signum = signum

    monkeypatch.setattr(loop.StopFlag, "poll", poll)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    from tests.conftest import TINY_MNIST1D

    out = tmp_path_factory.mktemp("reference") / "run"
    assert train(_config(list(TINY_MNIST1D)), out).status == "completed"
    return out


@pytest.mark.parametrize(
    ("update", "signum"),
    [
        (1, signal.SIGTERM),  # the first update
        (4, signal.SIGTERM),  # between two reads (reads after updates 3 and 6)
        (6, signal.SIGINT),  # at a read
        (STEPS_PER_EPOCH, signal.SIGTERM),  # an epoch's last update (a read)
        (STEPS_PER_EPOCH + 1, signal.SIGTERM),  # an epoch's first update (update 9: a read)
        (10, signal.SIGINT),  # at an evaluation (every 5), between reads (every 3)
    ],
)
def test_stop_then_resume_writes_the_uninterrupted_records(
    tmp_path, monkeypatch, reference, tiny_mnist1d_overrides, update, signum
):
    cfg = _config(tiny_mnist1d_overrides)
    out = tmp_path / "run"
    _stop_at(monkeypatch, update, signum)
    first = train(cfg, out)
    assert first.status == "stopped"
    assert first.summary["step"] == update
    monkeypatch.undo()
    assert train(cfg, out, resume=True).status == "completed"
    assert_same_records(out, reference)


def test_a_stop_between_reads_writes_no_extra_row(tmp_path, monkeypatch, tiny_mnist1d_overrides):
    cfg = _config(tiny_mnist1d_overrides)
    out = tmp_path / "run"
    _stop_at(monkeypatch, 4, signal.SIGTERM)
    train(cfg, out)
    rows = _jsonl(out / "steps.jsonl")
    assert [r["step"] for r in rows] == [3]  # the stop at update 4 is not a read
    assert all("grad_norm" in r for r in rows)


def test_two_stops_in_one_window_then_resume(
    tmp_path, monkeypatch, reference, tiny_mnist1d_overrides
):
    # Stopped after update 10, resumed, stopped again after update 11: both inside the window
    # of updates 10-12, read at 12.
    cfg = _config(tiny_mnist1d_overrides)
    out = tmp_path / "run"
    _stop_at(monkeypatch, 10, signal.SIGTERM)
    assert train(cfg, out).status == "stopped"
    _stop_at(monkeypatch, 1, signal.SIGTERM)
    assert train(cfg, out, resume=True).status == "stopped"
    monkeypatch.undo()
    assert train(cfg, out, resume=True).status == "completed"
    assert_same_records(out, reference)
