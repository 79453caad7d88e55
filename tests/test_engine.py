"""The engine on real data: learning, invariances, resume, divergence, run-directory contents."""

import json
import os

import pytest
import torch

from largebatch.checkpoint import CheckpointError, load_checkpoint
from largebatch.cli import main
from largebatch.config import load_config
from largebatch.data.sampling import epoch_order, global_batches, local_slice, plan_batches
from largebatch.engine import train
from largebatch.errors import UserError
from largebatch.rundir import read_metrics

from .conftest import FMNIST_DIR

RUN_FILES = (
    "config.yaml",
    "env.json",
    "data.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints/last.pt",
)


def params_of(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_params(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0), k


def test_mnist1d_cnn_learns_and_writes_a_complete_run_directory(tmp_path):
    cfg = load_config(
        "configs/mnist1d_cnn.yaml",
        [
            "data.num_samples=2000",
            "train.epochs=4",
            "train.progress=false",
        ],
    )
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).is_file(), name
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "epoch",
        "step",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "examples_per_s",
        "gap",
    ):
        assert key in rows[-1]
    assert rows[-1]["step"] == 4 * (1600 // 32)
    assert rows[-1]["val_acc"] > 0.5  # chance is 0.1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["wall_time_s"] > 0
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["torch"] == torch.__version__ and "git" in env and env["device"] == "cpu"


@pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_mlp_learns(tmp_path):
    cfg = load_config(
        "configs/fmnist_mlp.yaml",
        [
            "data.train_subset=6000",
            "train.epochs=2",
            "train.progress=false",
        ],
    )
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    assert result.summary["final"]["val_acc"] > 0.7  # chance is 0.1


def test_same_seed_same_result(tmp_path, tiny_mnist1d_overrides):
    cfg = load_config(None, tiny_mnist1d_overrides)
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    assert_same_params(params_of(tmp_path / "a"), params_of(tmp_path / "b"))
    cfg2 = load_config(None, [*tiny_mnist1d_overrides, "train.seed=1"])
    train(cfg2, tmp_path / "c")
    assert not torch.equal(
        params_of(tmp_path / "a")["net.1.weight"], params_of(tmp_path / "c")["net.1.weight"]
    )


@pytest.mark.parametrize("noise", ["0", "1e-3"])
def test_accumulation_equals_one_big_step(tmp_path, tiny_mnist1d_overrides, noise):
    base = [*tiny_mnist1d_overrides, "optim.momentum=0.9", f"noise.alpha={noise}"]
    train(load_config(None, base), tmp_path / "one")
    train(load_config(None, [*base, "train.micro_batch_size=16"]), tmp_path / "acc")
    assert_same_params(params_of(tmp_path / "one"), params_of(tmp_path / "acc"), atol=1e-6)


def test_resume_ends_with_the_uninterrupted_parameters(tmp_path, tiny_mnist1d_overrides):
    over = [*tiny_mnist1d_overrides, "train.epochs=4", "optim.schedule=cosine", "model.dropout=0.2"]
    cfg = load_config(None, over)
    train(cfg, tmp_path / "straight")
    stopped = train(cfg, tmp_path / "split", stop_after_epochs=2)
    assert stopped.status == "stopped"
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert resumed.status == "completed"
    assert_same_params(params_of(tmp_path / "straight"), params_of(tmp_path / "split"))
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == [1, 2, 3, 4]


def test_resume_refuses_a_changed_config(tmp_path, tiny_mnist1d_overrides):
    cfg = load_config(None, tiny_mnist1d_overrides)
    train(cfg, tmp_path / "run", stop_after_epochs=1)
    with pytest.raises(UserError, match="optim.lr"):
        train(
            load_config(None, [*tiny_mnist1d_overrides, "optim.lr=0.5"]),
            tmp_path / "run",
            resume=True,
        )
    with pytest.raises(UserError, match="--resume"):
        train(cfg, tmp_path / "run")


def test_divergence_is_recorded_not_raised(tmp_path, tiny_mnist1d_overrides, capsys):
    argv = [
        "train",
        "configs/mnist1d_mlp.yaml",
        *tiny_mnist1d_overrides,
        "optim.lr=1e6",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    err = capsys.readouterr().err
    assert "diverged" in err and "Traceback" not in err


def test_truncated_and_foreign_checkpoints_give_clear_errors(tmp_path, tiny_mnist1d_overrides):
    cfg = load_config(None, tiny_mnist1d_overrides)
    train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="truncated"):
        train(cfg, tmp_path / "run", resume=True)
    torch.save({"weights": torch.zeros(3)}, ckpt)
    with pytest.raises(CheckpointError, match="not a largebatch checkpoint"):
        load_checkpoint(ckpt)


def test_batch_plan_and_sharding():
    plan = plan_batches(512, 64, 2)
    assert (plan.per_device_batch_size, plan.accumulation_steps) == (256, 4)
    with pytest.raises(UserError, match="divisible"):
        plan_batches(510, None, 4)
    with pytest.raises(UserError, match="divide"):
        plan_batches(512, 100, 1)
    order = epoch_order(1000, seed=3, epoch=7)
    assert torch.equal(order, epoch_order(1000, seed=3, epoch=7))
    assert not torch.equal(order, epoch_order(1000, seed=3, epoch=8))
    batches = global_batches(order, 300, drop_last=True)
    assert [len(b) for b in batches] == [300, 300, 300]
    assert [len(b) for b in global_batches(order, 300, drop_last=False)] == [300, 300, 300, 100]
    shards = [local_slice(batches[0], r, 4) for r in range(4)]
    assert torch.equal(torch.cat(shards), batches[0])
