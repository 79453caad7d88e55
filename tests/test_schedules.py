import math

import pytest
import torch

from largebatch.config import load_config
from largebatch.optim import build_schedule, paper_milestones, scale_lr
from largebatch.optim.schedules import (
    as_lambda_lr,
    multistep_lambda,
    paper_lambda,
    warmup_cosine_lambda,
    warmup_lambda,
)


def test_scaling_rules():
    assert scale_lr(0.01, 32, 128, "linear") == pytest.approx(0.04)
    assert scale_lr(0.01, 32, 64, "linear") == pytest.approx(0.02)
    assert scale_lr(0.1, 256, 1024, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 256, 64, "sqrt") == pytest.approx(0.05)
    assert scale_lr(0.1, 256, 4096, "none") == 0.1
    with pytest.raises(ValueError):
        scale_lr(0.1, 256, 512, "cubic")


def sched(overrides, lr=1.0, steps_per_epoch=10, epochs=100):
    return build_schedule(load_config(None, overrides).optim, lr, steps_per_epoch, epochs)


def test_warmup_is_linear_per_step_then_flat():
    s = sched(["optim.warmup_epochs=2", "optim.warmup_start_factor=0.1"], lr=0.4)
    # 20 warmup steps from 0.04 to 0.4
    assert s(0) == pytest.approx(0.04)
    assert s(10) == pytest.approx(0.04 + 0.36 * 10 / 20)
    assert s(19) == pytest.approx(0.04 + 0.36 * 19 / 20)
    assert s(20) == pytest.approx(0.4)
    assert s(999) == pytest.approx(0.4)


def test_multistep_by_epoch():
    s = sched(["optim.schedule=multistep", "optim.milestones=[3, 5]", "optim.decay_factor=0.5"])
    assert [s(t) for t in (0, 29, 30, 49, 50, 999)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_paper_schedule_epochs_and_literal_factor():
    assert paper_milestones(100) == [25, 40, 50, 60, 70, 80, 90]
    assert paper_milestones(30) == [25]
    s = sched(["optim.schedule=paper"], lr=0.02, steps_per_epoch=10, epochs=100)
    assert s(249) == pytest.approx(0.02)
    assert s(250) == pytest.approx(0.02 * 0.9)
    assert s(400) == pytest.approx(0.02 * 0.81)
    assert s(500) == pytest.approx(0.02 * 0.9**3)
    assert s(999) == pytest.approx(0.02 * 0.9**7)
    s10 = sched(["optim.schedule=paper", "optim.decay_factor=0.1"], lr=1.0)
    assert s10(400) == pytest.approx(0.01)


def test_cosine_with_warmup():
    s = sched(
        ["optim.schedule=cosine", "optim.warmup_epochs=1", "optim.min_lr_factor=0.1"],
        lr=2.0,
        steps_per_epoch=10,
        epochs=11,
    )
    # 10 warmup steps, then 100 cosine steps
    assert s(10) == pytest.approx(2.0)
    assert s(60) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert s(110) == pytest.approx(0.2)


def lambda_lr_sequence(factor, peak=0.4, steps=12):
    """The LRs a LambdaLR with ``factor`` gives to updates 0..steps-1 of an SGD at ``peak``."""
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(
    "factor, expected",
    [
        (warmup_lambda(4, 0.25), lambda t: 0.25 + 0.75 * t / 4 if t < 4 else 1.0),
        (
            warmup_cosine_lambda(2, 10, min_factor=0.1),
            lambda t: (
                t / 2
                if t < 2
                else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - 2) / 8)))
            ),
        ),
        (
            multistep_lambda([3, 7], factor=0.5, warmup_steps=2),
            lambda t: (t / 2 if t < 2 else 1.0) * 0.5 ** ((t >= 3) + (t >= 7)),
        ),  # fmt: skip
        (
            paper_lambda(steps_per_epoch=1, total_epochs=60),
            lambda t: 0.9 ** sum(t >= e for e in (25, 40, 50)),
        ),  # fmt: skip
    ],
)
def test_factories_are_lambda_lr_multipliers(factor, expected):
    steps = 60
    got = lambda_lr_sequence(factor, peak=0.4, steps=steps)
    assert got == pytest.approx([0.4 * expected(t) for t in range(steps)])


def test_as_lambda_lr_follows_the_engine_schedule():
    s = sched(
        ["optim.schedule=cosine", "optim.warmup_epochs=1", "optim.warmup_start_factor=0.1"],
        lr=0.3,
        steps_per_epoch=5,
        epochs=4,
    )
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.3)
    scheduler = as_lambda_lr(opt, s)
    for t in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(s(t))
        opt.step()
        scheduler.step()
    # the scheduler's own state_dict round-trips (LambdaLR saves callable objects' fields)
    state = scheduler.state_dict()
    again = as_lambda_lr(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.3), s)
    again.load_state_dict(state)
    assert again.last_epoch == 20


def test_factory_arguments_are_checked():
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_lambda(10, 10)
    with pytest.raises(ValueError, match="start_factor"):
        warmup_lambda(3, start_factor=2.0)


@pytest.mark.parametrize("module", ["largebatch.optim.schedules"])
def test_schedule_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
