"""What ``--resume`` keeps and refuses: stale temp files, env.json history, a changed length."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from largebatch.checkpoint import load_checkpoint
from largebatch.config import load_config
from largebatch.engine import train
from largebatch.errors import UserError
from largebatch.optim.schedules import build_schedule


def _params(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_next_run_of_the_directory_removes_stale_temp_files(tmp_path, tiny_mnist1d_overrides):
    cfg = load_config(None, tiny_mnist1d_overrides)
    run = tmp_path / "run"
    train(cfg, run, stop_after_epochs=1)
    # What a kill during a write leaves behind (the pid is long gone).
    stale = [run / "checkpoints" / ".last.pt.tmp-999999", run / ".summary.json.tmp-999998"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = run / "checkpoints" / "mine.pt"  # not ours to delete
    keep.write_bytes(b"user file")
    assert train(cfg, run, resume=True).status == "completed"
    assert not any(path.exists() for path in stale)
    assert keep.exists()


def test_resume_keeps_env_json_and_appends_a_history(tmp_path, tiny_mnist1d_overrides, monkeypatch):
    cfg = load_config(None, [*tiny_mnist1d_overrides, "train.epochs=3"])
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["largebatch", "train", "first"])
    train(cfg, run, stop_after_epochs=1)
    original = json.loads((run / "env.json").read_text())
    assert original["command"] == ["largebatch", "train", "first"]
    assert original.get("history", []) == []
    steps = []
    for i in (1, 2):
        steps.append(json.loads((run / "summary.json").read_text())["step"])
        monkeypatch.setattr(sys, "argv", ["largebatch", "train", f"resume-{i}", "--resume"])
        train(cfg, run, resume=True, stop_after_epochs=1 + i)
    env = json.loads((run / "env.json").read_text())
    drop = {"history"}
    assert {k: v for k, v in env.items() if k not in drop} == {
        k: v for k, v in original.items() if k not in drop
    }
    assert [h["command"] for h in env["history"]] == [
        ["largebatch", "train", "resume-1", "--resume"],
        ["largebatch", "train", "resume-2", "--resume"],
    ]
    for entry in env["history"]:
        assert entry["hostname"] == original["hostname"]
        assert entry["world_size"] == 1
        assert entry["time"]
    assert [h["resumed_at_step"] for h in env["history"]] == steps
    assert 0 < steps[0] < steps[1]


def test_cosine_run_refuses_a_new_length_on_resume(tmp_path, tiny_mnist1d_overrides):
    over = [*tiny_mnist1d_overrides, "optim.schedule=cosine"]
    run = tmp_path / "run"
    train(load_config(None, over), run, stop_after_epochs=1)
    with pytest.raises(UserError, match="cosine") as err:
        train(load_config(None, [*over, "train.epochs=4"]), run, resume=True)
    message = str(err.value)
    assert "train.epochs=2" in message and "--out" in message  # the two ways out


@pytest.mark.parametrize(
    "schedule", [["optim.schedule=constant"], ["optim.schedule=multistep", "optim.milestones=[1]"]]
)
def test_extending_a_length_free_schedule_equals_the_longer_run(
    tmp_path, tiny_mnist1d_overrides, schedule
):
    over = [*tiny_mnist1d_overrides, *schedule]
    longer = load_config(None, [*over, "train.epochs=3"])
    train(longer, tmp_path / "straight")
    train(load_config(None, over), tmp_path / "extended")  # 2 epochs, completed
    assert train(longer, tmp_path / "extended", resume=True).status == "completed"
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "extended")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_paper_schedule_over_the_updates_done_does_not_depend_on_the_length():
    """Why the paper schedule may be extended: its milestones below the old length are those of
    any longer run, so the updates already done had the longer run's learning rates."""
    cfg = load_config(None, ["optim.schedule=paper"]).optim
    for old in (10, 25, 26, 40, 41, 55, 60):
        short = build_schedule(cfg, 0.1, 3, old)
        for new in (old + 1, old + 10, 2 * old + 7):
            long = build_schedule(cfg, 0.1, 3, new)
            assert [short(t) for t in range(3 * old)] == [long(t) for t in range(3 * old)]
    cosine = load_config(None, ["optim.schedule=cosine"]).optim
    assert build_schedule(cosine, 0.1, 3, 10)(5) != build_schedule(cosine, 0.1, 3, 20)(5)
