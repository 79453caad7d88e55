"""The baselines a user compares the paper's method with: LARS, Ghost BatchNorm, train longer."""

import pytest
import torch
from torch import nn

from largebatch.checkpoint import load_checkpoint
from largebatch.config import load_config
from largebatch.engine import train
from largebatch.gradient.base import UpdateInfo
from largebatch.optim import build_optimizer, build_schedule


def test_lars_update_matches_you_et_al_formula():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    cfg = load_config(
        None,
        [
            "optim.name=lars",
            "optim.momentum=0",
            "optim.weight_decay=0.01",
            "optim.trust_coefficient=0.02",
        ],
    )
    setup = build_optimizer(model, cfg, lr=0.5)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    model(torch.randn(8, 5)).pow(2).mean().backward()
    g_w, g_b = model.weight.grad.clone(), model.bias.grad.clone()
    setup.chain.before_step(UpdateInfo(step=0, lr=0.5))
    setup.optimizer.step()
    ratio = 0.02 * w0.norm() / (g_w.norm() + 0.01 * w0.norm())
    torch.testing.assert_close(model.weight.detach(), w0 - 0.5 * ratio * (g_w + 0.01 * w0))
    # biases: plain SGD with (coupled) weight decay, no trust ratio
    torch.testing.assert_close(model.bias.detach(), b0 - 0.5 * (g_b + 0.01 * b0))


def test_weight_decay_can_skip_bias_and_norm():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    cfg = load_config(None, ["optim.weight_decay=0.1", "optim.decay_bias_and_norm=false"])
    groups = build_optimizer(model, cfg, lr=0.1).optimizer.param_groups
    decay = {g["name"]: (g["weight_decay"], len(g["params"])) for g in groups}
    assert decay == {"weights": (0.1, 1), "bias_and_norm": (0.0, 3)}


def test_ghost_batchnorm_run_trains(tmp_path, tiny_mnist1d_overrides):
    over = [
        *tiny_mnist1d_overrides,
        "model.name=cnn1d",
        "model.channels=8",
        "model.ghost_batch_size=16",
    ]
    result = train(load_config(None, over), tmp_path / "run")
    assert result.status == "completed"
    assert result.summary["final"]["train_acc"] > 0.15


def test_train_longer_keeps_the_number_of_updates(tmp_path, tiny_mnist1d_overrides):
    # 480 examples: base batch 32 makes 15 updates/epoch; batch 64 makes 7, for 2x the epochs
    over = [
        *tiny_mnist1d_overrides,
        "optim.base_batch_size=32",
        "train.scale_epochs=true",
        "optim.schedule=multistep",
        "optim.milestones=[1]",
    ]
    result = train(load_config(None, over), tmp_path / "run")
    assert result.summary["final"]["epoch"] == 4
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4 * 7
    cfg = load_config(None, over)
    sched = build_schedule(cfg.optim, 1.0, 7, 2, epoch_scale=2.0)
    assert sched(13) == 1.0 and sched(14) == pytest.approx(0.1)  # milestone epoch 1 -> 2
