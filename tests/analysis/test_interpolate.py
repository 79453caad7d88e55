"""Range parsing, and the interpolation's end points equal the end networks exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from largebatch.analysis.batchnorm import recompute_bn_stats
from largebatch.analysis.interpolate import (
    ModelMismatchError,
    RangeFormatError,
    evaluate,
    interpolate_models,
    parse_range,
)
from largebatch.errors import UserError

from .helpers import make_bn_net, make_data, make_mlp


def batches(n: int, size: int, seed: int):
    x, y = make_data(n, seed=seed)
    return list(zip(x.split(size), y.split(size), strict=True))


def test_parse_range():
    values = parse_range("-1:2:31")
    assert len(values) == 31
    assert values[0] == -1.0 and values[-1] == 2.0
    assert values[10] == pytest.approx(0.0, abs=1e-15) and values[20] == pytest.approx(1.0)
    assert parse_range("0:1:2") == [0.0, 1.0]
    assert parse_range("1e-1:-0.5:3") == pytest.approx([0.1, -0.2, -0.5])


@pytest.mark.parametrize("text", ["-1:2", "a:b:3", "0:1:1", "0:1:2.5", "0:inf:3", "", "1:2:3:4"])
def test_bad_ranges_name_the_format(text):
    with pytest.raises(RangeFormatError, match="START:STOP:NUM") as info:
        parse_range(text)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_end_points_without_batchnorm():
    a, b = make_mlp(seed=0), make_mlp(seed=1)
    train, val = batches(50, 16, seed=2), batches(30, 16, seed=3)
    res = interpolate_models(a, b, parse_range("-1:2:7"), train, val)
    assert res.alphas == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert not res.bn_recomputed
    assert (res.train_loss[2], res.train_accuracy[2]) == evaluate(a, train)
    assert (res.val_loss[2], res.val_accuracy[2]) == evaluate(a, val)
    assert (res.train_loss[4], res.train_accuracy[4]) == evaluate(b, train)
    assert (res.val_loss[4], res.val_accuracy[4]) == evaluate(b, val)
    assert res.num_train == 50 and res.num_val == 30
    # The midpoint is the network with averaged parameters.
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for p, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters(), strict=True):
            p.copy_(0.5 * pa + 0.5 * pb)
    assert res.train_loss[3] == pytest.approx(evaluate(mid, train)[0], rel=1e-12)


def test_end_points_with_batchnorm_kept_statistics():
    a, b = make_bn_net(seed=0), make_bn_net(seed=1)
    before = [t.clone() for t in list(a.state_dict().values()) + list(b.state_dict().values())]
    train, val = batches(60, 20, seed=4), batches(30, 10, seed=5)
    res = interpolate_models(a, b, [0.0, 0.5, 1.0], train, val, bn_recompute=False)
    assert not res.bn_recomputed
    assert (res.train_loss[0], res.train_accuracy[0]) == evaluate(a, train)
    assert (res.val_loss[2], res.val_accuracy[2]) == evaluate(b, val)
    after = list(a.state_dict().values()) + list(b.state_dict().values())
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_end_points_with_batchnorm_recomputed():
    a, b = make_bn_net(seed=0), make_bn_net(seed=1)
    train, val = batches(60, 20, seed=4), batches(30, 10, seed=5)
    res = interpolate_models(a, b, [0.0, 0.5, 1.0], train, val, bn_recompute=True)
    assert res.bn_recomputed
    a_re, b_re = copy.deepcopy(a), copy.deepcopy(b)
    recompute_bn_stats(a_re, train)
    recompute_bn_stats(b_re, train)
    assert (res.train_loss[0], res.val_loss[0], res.val_accuracy[0]) == (
        evaluate(a_re, train)[0],
        *evaluate(a_re, val),
    )
    assert (res.train_loss[2], res.val_loss[2]) == (
        evaluate(b_re, train)[0],
        evaluate(b_re, val)[0],
    )
    # ... and not the losses with the checkpoint's own statistics.
    assert res.val_loss[0] != evaluate(a, val)[0]


def test_mismatched_models_are_a_user_error():
    a = make_mlp()
    b = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    train = batches(10, 5, seed=0)
    with pytest.raises(ModelMismatchError, match="same model config") as info:
        interpolate_models(a, b, [0.0], train, train)
    assert isinstance(info.value, UserError)
