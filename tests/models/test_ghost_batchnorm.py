"""Ghost BatchNorm against plain BatchNorm: equal per chunk, equal in eval, surgery keeps state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from largebatch.models.ghost_batchnorm import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    convert_to_ghost_batchnorm,
)


def _pair(dim: int, ghost: int):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4) if dim == 2 else nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    gbn = convert_to_ghost_batchnorm(bn, ghost)
    return bn, gbn


def _input(dim: int, n: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (n, 4, 5, 3) if dim == 2 else (n, 4)
    return torch.randn(*shape, generator=g) * 3 + 1


@pytest.mark.parametrize("dim", [1, 2])
def test_ghost_size_equal_to_batch_is_batchnorm(dim):
    bn, gbn = _pair(dim, 12)
    x = _input(dim)
    torch.testing.assert_close(gbn(x), bn(x), rtol=0, atol=0)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(gbn, name), getattr(bn, name), rtol=0, atol=0)


@pytest.mark.parametrize("dim", [1, 2])
def test_chunks_equal_batchnorm_on_each_chunk(dim):
    bn, gbn = _pair(dim, 4)
    x = _input(dim).requires_grad_()
    out = gbn(x)
    ref = [bn(chunk) for chunk in x.detach().split(4)]
    torch.testing.assert_close(out, torch.cat(ref), rtol=1e-5, atol=1e-5)
    out.pow(2).sum().backward()  # differentiable through the folded batch_norm
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_running_stats_averaged_once_per_forward():
    bn, gbn = _pair(2, 4)
    x = _input(2)
    gbn(x)
    dims = (0, 2, 3)
    chunks = x.split(4)
    mean = torch.stack([c.mean(dims) for c in chunks]).mean(0)
    var = torch.stack([c.var(dims, unbiased=True) for c in chunks]).mean(0)
    torch.testing.assert_close(gbn.running_mean, 0.9 * torch.zeros(4) + 0.1 * mean)
    torch.testing.assert_close(gbn.running_var, 0.9 * torch.ones(4) + 0.1 * var)
    assert int(gbn.num_batches_tracked) == 1


def test_uneven_last_chunk():
    bn, gbn = _pair(2, 5)
    x = _input(2)  # 12 = 5 + 5 + 2
    ref = torch.cat([bn(c) for c in x.split(5)])
    torch.testing.assert_close(gbn(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [1, 2])
def test_eval_mode_is_batchnorm(dim):
    bn, gbn = _pair(dim, 3)
    for _ in range(3):  # shared training history: only the running stats matter in eval
        x = _input(dim)
        bn(x)
    gbn.load_state_dict(bn.state_dict())
    bn.eval()
    gbn.eval()
    x = _input(dim, 7)
    torch.testing.assert_close(gbn(x), bn(x), rtol=0, atol=0)


def test_conversion_keeps_state_and_swaps_every_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
        nn.BatchNorm1d(5, momentum=None),
    )
    model(torch.randn(8, 3, 8, 8))  # give the running stats values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_to_ghost_batchnorm(model, 2)
    assert converted is model
    assert isinstance(model[1], GhostBatchNorm2d) and isinstance(model[4], GhostBatchNorm1d)
    assert model[4].momentum is None and model[1].ghost_batch_size == 2
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
