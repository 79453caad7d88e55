"""Filter-normalised directions and loss surfaces."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from largebatch.analysis.batchnorm import recompute_bn_stats
from largebatch.analysis.interpolate import evaluate
from largebatch.analysis.surface import filter_normalized_direction, loss_surface

from .helpers import make_bn_net, make_data, make_mlp


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_each_filter_has_the_norm_of_its_weights():
    model = ConvNet()
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    for (name, p), d in zip(model.named_parameters(), direction, strict=True):
        assert d.shape == p.shape
        if p.dim() <= 1:  # biases and BN parameters
            assert torch.count_nonzero(d) == 0, name
        else:
            torch.testing.assert_close(
                d.reshape(len(d), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1)
            )
            assert not torch.allclose(d, p.detach())  # random, not the weights themselves
    kept = filter_normalized_direction(
        model, torch.Generator().manual_seed(0), ignore_bias_bn=False
    )
    assert torch.equal(kept[1], model.conv.bias.detach())


def test_directions_are_seeded():
    model = make_mlp()
    d1 = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    d2 = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    d3 = filter_normalized_direction(model, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(d1, d2, strict=True))
    assert not torch.equal(d1[0], d3[0])


def moved(model: nn.Module, steps_and_directions) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for i, p in enumerate(out.parameters()):
            for step, direction in steps_and_directions:
                p.add_(direction[i], alpha=step)
    return out


def test_1d_and_2d_surfaces_evaluate_the_right_points():
    model = make_mlp(seed=1)
    x, y = make_data(40, seed=2)
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    coords = [-1.0, 0.0, 0.5]
    d1 = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    d2 = filter_normalized_direction(model, torch.Generator().manual_seed(1))
    one = loss_surface(model, batches, coords, dim=1, directions=[d1])
    assert one.loss.shape == (3,) and one.num_evaluations == 3
    assert one.loss[1].item() == evaluate(model, batches)[0]
    assert one.loss[0].item() == pytest.approx(evaluate(moved(model, [(-1.0, d1)]), batches)[0])
    two = loss_surface(model, batches, coords, dim=2, directions=[d1, d2])
    assert two.loss.shape == (3, 3)
    # loss[i, j] is at (coords[i] along d1, coords[j] along d2): check an asymmetric point.
    expected = evaluate(moved(model, [(-1.0, d1), (0.5, d2)]), batches)
    assert two.loss[0, 2].item() == pytest.approx(expected[0])
    assert two.accuracy[0, 2].item() == pytest.approx(expected[1])
    # Seeded random directions give the same surface twice.
    r1 = loss_surface(model, batches, coords, generator=torch.Generator().manual_seed(5))
    r2 = loss_surface(model, batches, coords, generator=torch.Generator().manual_seed(5))
    assert torch.equal(r1.loss, r2.loss)


def test_batchnorm_statistics_are_recomputed_and_the_model_kept():
    model = make_bn_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = make_data(40, seed=3)
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    res = loss_surface(model, batches, [0.0], generator=torch.Generator().manual_seed(0))
    assert res.bn_recomputed
    centre = copy.deepcopy(model)
    recompute_bn_stats(centre, batches)
    assert res.loss[0].item() == evaluate(centre, batches)[0]
    gen = torch.Generator().manual_seed(0)
    kept = loss_surface(model, batches, [0.0], bn_recompute=False, generator=gen)
    assert kept.loss[0].item() == evaluate(model, batches)[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_directions_must_match_the_parameters():
    model = make_mlp()
    x, y = make_data(8)
    with pytest.raises(ValueError, match="one tensor per parameter"):
        loss_surface(model, [(x, y)], [0.0], directions=[[torch.zeros(3)]])
