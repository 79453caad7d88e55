"""Explicit BatchNorm modes and the recomputation of running statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from largebatch.analysis.batchnorm import bn_mode, recompute_bn_stats

from .helpers import make_bn_net, make_data


def test_recompute_is_the_cumulative_average_of_batch_statistics():
    layer = nn.BatchNorm1d(3, momentum=0.1).double()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 3, generator=g, dtype=torch.float64) * 2 + 1 for n in (8, 8, 8, 8)]
    layer.train()
    count = recompute_bn_stats(layer, xs)
    assert count == 32
    means = torch.stack([x.mean(0) for x in xs]).mean(0)
    variances = torch.stack([x.var(0, unbiased=True) for x in xs]).mean(0)
    torch.testing.assert_close(layer.running_mean, means)
    torch.testing.assert_close(layer.running_var, variances)
    assert layer.momentum == 0.1 and not layer.training
    # Earlier statistics do not leak in: a second recomputation gives the same result.
    recompute_bn_stats(layer, xs)
    torch.testing.assert_close(layer.running_mean, means)


def test_recompute_keeps_dropout_off_and_accepts_pairs():
    # Dropout *before* the BN layer: with dropout on, the statistics would be of dropped inputs.
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(5)).double()
    x, y = make_data(40, seed=1)
    model.train()
    recompute_bn_stats(model, [(x[:20], y[:20]), (x[20:], y[20:])])
    torch.testing.assert_close(model[1].running_mean, (x[:20].mean(0) + x[20:].mean(0)) / 2)
    assert not model.training and not model[0].training and not model[1].training


def test_recompute_needs_batches_and_ignores_models_without_bn():
    model = make_bn_net()
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn_stats(model, [])
    plain = nn.Linear(3, 2)
    assert recompute_bn_stats(plain, [torch.zeros(2, 3)]) == 0


def test_bn_mode_train_does_not_touch_running_statistics():
    model = make_bn_net()
    model.train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with bn_mode(model, "train"):
        assert model.bn.training and not model.drop.training and not model.training
        model(make_data(16)[0])
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert model.training and model.drop.training and model.bn.track_running_stats
    with pytest.raises(ValueError, match="bn_mode"):
        with bn_mode(model, "ghost"):
            pass
