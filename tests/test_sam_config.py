"""The sharpness-aware keys of the config (``optim.sam*``, ``optim.grad_penalty_form``,
``train.label_smoothing``): every mistake is refused with its fix named, and every kind trains
(a real short run) and resumes bit-exactly."""

from __future__ import annotations

import pytest
import torch

from largebatch.checkpoint import load_checkpoint
from largebatch.cli import main
from largebatch.config import ConfigError, load_config
from largebatch.engine import train
from largebatch.rundir import read_metrics

from .conftest import TINY_MNIST1D

CNN = [*TINY_MNIST1D, "model.name=cnn1d", "model.channels=8"]
PENALTY = ["optim.grad_penalty=0.1", "optim.grad_penalty_form=finite_difference"]


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (
            ["optim.sam_rho=0.1"],
            "optim.sam_rho has no effect with optim.sam=none; choose optim.sam",
        ),
        (["optim.sam_normalize=false"], "optim.sam_normalize has no effect with optim.sam=none"),
        (
            ["optim.grad_penalty_form=finite_difference"],
            "optim.grad_penalty_form has no effect without optim.grad_penalty > 0; set both",
        ),
        (["optim.sam=sam", "optim.grad_penalty=0.1"], "use one"),
        (["optim.sam=msam", "optim.grad_penalty=0.1"], "optim.sam_normalize=false"),
        (["optim.sam=momentum", "optim.momentum=0"], "set optim.momentum > 0"),
        (["optim.sam=momentum", "optim.sam_normalize=false"], "always rho v/|v|"),
        (["optim.sam=sam", "noise.kind=microbatch"], "use noise.kind=isotropic or optim.sam="),
        (["optim.sam=msam", "noise.kind=microbatch"], "use noise.kind=isotropic or optim.sam="),
        (
            ["optim.grad_penalty=0.1", "train.compile=true"],
            "set optim.grad_penalty_form=finite_difference",
        ),
        (
            [*PENALTY, "noise.kind=microbatch"],
            "optim.grad_penalty_form=double_backward",
        ),
        (["optim.sam=bogus"], "optim.sam: 'bogus' is not one of: none, sam, msam, momentum"),
        (["optim.sam=sam", "optim.sam_rho=-0.1"], "optim.sam_rho: must be > 0"),
        (["train.label_smoothing=1.0"], "train.label_smoothing: must be in [0, 1)"),
        (["train.label_smoothing=-0.1"], "train.label_smoothing: must be in [0, 1)"),
    ],
)
def test_config_mistakes_are_refused_with_the_fix(overrides, fix):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*TINY_MNIST1D, *overrides])
    assert fix in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim.sam=sam", "optim.sam_rho=0.1", "optim.sam_normalize=false"],
        ["optim.sam=msam", "train.micro_batch_size=16"],
        ["optim.sam=momentum", "noise.kind=microbatch"],  # one pass: the noise can draw from it
        [
            "optim.grad_penalty=0.1",
            "optim.grad_penalty_form=finite_difference",
            "train.compile=true",
        ],
        ["train.label_smoothing=0.0"],
    ],
)
def test_valid_combinations_load(overrides):
    load_config(None, [*TINY_MNIST1D, *overrides])


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (["optim.sam=msam"], "set train.micro_batch_size to a smaller divisor of it (e.g. 32)"),
        (
            ["model.name=cnn1d", "model.channels=8", "model.ghost_batch_size=64"],
            "use a smaller ghost batch",
        ),
        (
            [
                "model.name=cnn1d",
                "model.channels=8",
                "train.micro_batch_size=16",
                "model.ghost_batch_size=16",
            ],
            "is not smaller than the 16 examples of each forward",
        ),
        (["model.ghost_batch_size=16"], "model mlp has no BatchNorm to split"),
    ],
)
def test_build_time_mistakes_exit_2_with_one_error_line(tmp_path, capsys, overrides, fix):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "mnist1d_mlp", *TINY_MNIST1D, *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fix in errors[0], err
    assert not (run / "metrics.jsonl").exists()


def test_a_config_mistake_through_the_cli_exits_2(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "run"), "mnist1d_mlp", "optim.sam_rho=0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "choose optim.sam" in err


# ----------------------------------------------------------------------------------------------
# Real runs


KINDS = {
    "sam": ["optim.sam=sam"],
    "msam": ["optim.sam=msam", "train.micro_batch_size=16"],
    "momentum": ["optim.sam=momentum"],
    "finite_difference": [*PENALTY, "train.micro_batch_size=16"],
    "label_smoothing": ["train.label_smoothing=0.1"],
}


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("plain") / "run"
    assert train(load_config(None, [*CNN, "train.epochs=3"]), run).status == "completed"
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_and_lowers_the_loss(tmp_path, plain_run, kind):
    run = tmp_path / "run"
    result = train(load_config(None, [*CNN, "train.epochs=3", *KINDS[kind]]), run)
    assert result.status == "completed"
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["running_loss"] > 2.2  # it starts at about ln 10
    assert rows[-1]["train_loss"] < 2.1 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    # the key was used: the weights are not those of the plain run
    model = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert max((model[k] - v).abs().max().item() for k, v in plain_run.items()) > 1e-4


def _assert_same_tensors(a, b, where="") -> None:
    """Every tensor (and every plain value) of two nested states is identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.parametrize("kind", ["msam", "momentum"])
def test_stop_and_resume_is_bit_exact(tmp_path, kind):
    over = [*CNN, *KINDS[kind], "train.epochs=2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "--out", str(straight), "mnist1d_mlp", *over]) == 0
    assert main(["train", "--out", str(split), "mnist1d_mlp", *over, "--stop-after", "1"]) == 0
    assert load_checkpoint(split / "checkpoints" / "last.pt")["epoch"] == 1
    assert main(["train", "--out", str(split), "mnist1d_mlp", *over, "--resume"]) == 0
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 14
    assert a["optimizer"]["state"], "the momentum buffers are part of the state"
    _assert_same_tensors(a["model"], b["model"], "model")
    _assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert [r["epoch"] for r in read_metrics(split)] == [1, 2]
