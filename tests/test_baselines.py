"""The baselines a user compares the paper's method with: LARS, Ghost BatchNorm, train longer."""

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from largebatch.checkpoint import load_checkpoint
from largebatch.config import LARS_FORMS, ConfigError, load_config, resolved
from largebatch.data.sampling import epoch_order, global_batches
from largebatch.distributed import DistContext
from largebatch.engine import train
from largebatch.engine.setup import build_run
from largebatch.gradient.pipeline import TRANSFORM_ORDER
from largebatch.models import ghost_batchnorm
from largebatch.optim import LARS, build_optimizer, build_schedule
from largebatch.optim import LARS_FORMS as FORMS


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
    assert isinstance(setup.optimizer, LARS) and setup.optimizer.form.name == "you2017"
    assert setup.chain.order == []  # the trust ratio is the optimizer's, not a chain transform
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    model(torch.randn(8, 5)).pow(2).mean().backward()
    g_w, g_b = model.weight.grad.clone(), model.bias.grad.clone()
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


# ----------------------------------------------------------------------------------------------
# LARS in the engine: optim.name=lars is largebatch.optim.LARS, in the form optim.lars_form

LARS_RUN = [
    "train.epochs=2",
    "train.eval_train=false",
    "optim.name=lars",
    "optim.lr=2.0",
    "optim.momentum=0.9",
    "optim.weight_decay=1e-3",
    "optim.trust_coefficient=0.02",
    "optim.warmup_epochs=1",  # a new LR every update of the first epoch
]


def lars_reference(cfg, form):
    """The run's weights after ``cfg``'s updates, from the LARS equations written out here (one
    tensor at a time) on the engine's own initial model, batches and schedule.

    you2017: ``v <- m v + lr r d; w <- w - v``; timm: ``b <- m b + r d; w <- w - lr b``; with
    ``d = g + wd w``, ``r = eta |w| / (|g| + wd |w| + eps)`` on weight matrices and ``r = 1`` on
    biases (which get weight decay too: ``optim.decay_bias_and_norm`` defaults to true)."""
    cfg = resolved(cfg)
    run = build_run(cfg, DistContext(), torch.device("cpu"))
    o, model = cfg.optim, run.model
    eps = FORMS[form].eps
    buf = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    lrs, t = [], 0
    for epoch in range(run.total_epochs):
        order = epoch_order(len(run.data.train), cfg.train.seed, epoch)
        for batch in global_batches(order, cfg.train.global_batch_size, True, 1):
            x, y = run.data.train.get_batch(batch, False, None)
            params = dict(model.named_parameters())
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
            lr = run.schedule(t)
            lrs.append(lr)
            with torch.no_grad():
                for (name, w), g in zip(params.items(), grads, strict=True):
                    d = g + o.weight_decay * w
                    r = 1.0
                    if w.ndim > 1:
                        r = (
                            o.trust_coefficient
                            * w.norm()
                            / (g.norm() + o.weight_decay * w.norm() + eps)
                        )
                    if form == "you2017":
                        buf[name] = o.momentum * buf[name] + lr * r * d
                        w -= buf[name]
                    else:
                        buf[name] = o.momentum * buf[name] + r * d
                        w -= lr * buf[name]
            t += 1
    return model.state_dict(), lrs


@pytest.mark.parametrize("form", ["you2017", "timm"])
def test_engine_lars_follows_the_lars_equations_under_warmup(
    form, tmp_path, tiny_mnist1d_overrides
):
    cfg = load_config(None, [*tiny_mnist1d_overrides, *LARS_RUN, f"optim.lars_form={form}"])
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    expected, lrs = lars_reference(cfg, form)
    assert len(lrs) == 14 and len(set(lrs[:7])) == 7  # 7 updates per epoch, warmup over the 1st
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # the form matters under warmup: the other form's equations are far from this run
    other, _ = lars_reference(cfg, "timm" if form == "you2017" else "you2017")
    gap = max((final[n] - other[n]).abs().max().item() for n in expected)
    assert gap > 1e-3


def test_lars_form_is_checked_and_reaches_the_optimizer():
    assert LARS_FORMS == tuple(FORMS)
    for form in LARS_FORMS:
        cfg = load_config(None, ["optim.name=lars", f"optim.lars_form={form}"])
        assert build_optimizer(nn.Linear(3, 2), cfg, lr=0.1).optimizer.form.name == form
    with pytest.raises(ConfigError, match="optim.lars_form: 'lamb' is not one of: you2017, "):
        load_config(None, ["optim.name=lars", "optim.lars_form=lamb"])
    with pytest.raises(ConfigError, match="larc form has no Nesterov"):
        load_config(None, ["optim.name=lars", "optim.lars_form=larc", "optim.nesterov=true"])


def test_trust_ratio_is_not_a_chain_transform():
    assert "trust_ratio" not in TRANSFORM_ORDER
    assert isinstance(
        build_optimizer(nn.Linear(3, 2), load_config(None, []), lr=0.1).optimizer,
        torch.optim.SGD,
    )


def test_ghost_batchnorm_docstring_example_runs():
    result = doctest.testmod(ghost_batchnorm)
    assert result.attempted > 0 and result.failed == 0
