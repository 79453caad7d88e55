"""train.tensorboard: event files in RUN/tensorboard/ with the same numbers as the JSON-lines
records; without the package, an error that names the install command (exit 2)."""

from __future__ import annotations

import importlib.util

import pytest

from largebatch import rundir
from largebatch.cli import main
from largebatch.config import load_config
from largebatch.engine import trackers, train
from largebatch.engine.trackers import tensorboard
from largebatch.errors import UserError


def test_event_files_hold_the_records_numbers(tmp_path, tiny_mnist1d_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    over = [*tiny_mnist1d_overrides, "train.tensorboard=true", "train.log_every_steps=3"]
    run = tmp_path / "run"
    assert train(load_config(None, over), run).status == "completed"
    events = EventAccumulator(str(run / tensorboard.DIRNAME))
    events.Reload()

    steps = rundir.read_jsonl(run / rundir.STEPS)
    assert len(steps) >= 4  # 7 updates per epoch: reads at 3, 6, 7 (epoch end), 9, 12, 14
    for key in ("loss", "lr", "grad_norm", "examples_per_s", "noise_variance"):
        board = {e.step: e.value for e in events.Scalars(f"train/{key}")}
        assert sorted(board) == [row["step"] for row in steps], key
        for row in steps:
            assert board[row["step"]] == pytest.approx(row[key], rel=1e-6, abs=1e-12), key

    metrics = rundir.read_metrics(run)
    for key in ("val_acc", "train_loss", "running_loss", "lr"):
        board = {e.step: e.value for e in events.Scalars(f"epoch/{key}")}
        assert board == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in metrics}, key


def test_resume_continues_the_same_event_log(tmp_path, tiny_mnist1d_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    over = [*tiny_mnist1d_overrides, "train.tensorboard=true", "train.log_every_steps=3"]
    run = tmp_path / "run"
    assert train(load_config(None, over), run, stop_after_epochs=1).status == "stopped"
    assert train(load_config(None, over), run, resume=True).status == "completed"
    events = EventAccumulator(str(run / tensorboard.DIRNAME))
    events.Reload()
    loss_steps = [e.step for e in events.Scalars("train/loss")]
    assert loss_steps == [row["step"] for row in rundir.read_jsonl(run / rundir.STEPS)]


def test_off_writes_nothing(tmp_path, tiny_mnist1d_overrides):
    run = tmp_path / "run"
    train(load_config(None, [*tiny_mnist1d_overrides, "train.epochs=1"]), run)
    assert not (run / tensorboard.DIRNAME).exists()
    assert trackers.log(run, "train", {"loss": 1.0}, 1) is False


def test_missing_package_is_a_user_error_naming_the_install(
    tmp_path, tiny_mnist1d_overrides, monkeypatch, capsys
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    cfg = load_config(None, [*tiny_mnist1d_overrides, "train.tensorboard=true"])
    with pytest.raises(UserError, match=r"pip install tensorboard"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory is made

    out = str(tmp_path / "cli")
    argv = ["train", "mnist1d_mlp", *tiny_mnist1d_overrides, "train.tensorboard=true"]
    code = main([*argv, "--out", out])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "pip install tensorboard" in err and "Traceback" not in err
