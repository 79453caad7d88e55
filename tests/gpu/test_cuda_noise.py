"""Gradient noise on CUDA: the variance it promises, and the same draws from the same seed."""

from __future__ import annotations

import math

import pytest
import torch

from largebatch import GradientNoise
from largebatch.checkpoint import load_checkpoint
from largebatch.engine import train

from .conftest import GPU, tiny_config

pytestmark = GPU


def zero_grad_params(device: torch.device, sizes=(1000, 250_000, 5)) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(torch.zeros(n, device=device)) for n in sizes]
    for p in params:
        p.grad = torch.zeros_like(p)
    return params


@pytest.mark.parametrize("t", [0, 9])
def test_isotropic_noise_has_the_configured_variance(device, t):
    params = zero_grad_params(device)
    noise = GradientNoise(params, alpha=1e-3, gamma=0.55, seed=3)
    noise.t = t
    noise()
    draws = torch.cat([p.grad for p in params]).double()
    assert draws.device.type == device.type
    n, target = draws.numel(), 1e-3 / (1 + t) ** 0.55
    # The sample variance of n normals has relative std sqrt(2 / n); 5 sigma.
    assert abs(draws.var().item() / target - 1) < 5 * math.sqrt(2 / n)
    assert abs(draws.mean().item()) < 5 * math.sqrt(target / n)
    assert noise.t == t + 1


def test_same_seed_same_noise_other_seed_other_noise(device):
    def draw(seed: int, updates: int = 3) -> list[torch.Tensor]:
        params = zero_grad_params(device)
        noise = GradientNoise(params, alpha=1e-2, seed=seed)
        out = []
        for _ in range(updates):
            for p in params:
                p.grad.zero_()
            noise()
            out.append(torch.cat([p.grad for p in params]).clone())
        return out

    a, b, c = draw(0), draw(0), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # a fresh draw each update


def test_noise_state_resumes_the_same_draws_on_cuda(device):
    params = zero_grad_params(device, sizes=(4096,))
    noise = GradientNoise(params, alpha=1e-2, seed=5)
    noise()
    state = noise.state_dict()
    params[0].grad.zero_()
    noise()
    expected = params[0].grad.clone()
    other = GradientNoise(zero_grad_params(device, sizes=(4096,)), alpha=1e-2, seed=99)
    other.load_state_dict(state)
    other()
    assert torch.equal(other.params[0].grad, expected)


@pytest.mark.parametrize(
    "extra",
    [
        ["noise.alpha=1e-3"],
        ["noise.kind=microbatch", "train.micro_batch_size=16", "noise.match=step"],
        ["noise.kind=diagonal", "train.micro_batch_size=16", "noise.match=step"],
        ["noise.kind=multiplicative", "noise.match=step"],
    ],
    ids=["isotropic", "microbatch", "diagonal", "multiplicative"],
)
def test_training_with_noise_is_deterministic_on_cuda(tmp_path, extra):
    over = [*extra, "optim.base_batch_size=16"] if "noise.match=step" in extra else extra
    train(tiny_config(*over), tmp_path / "a")
    train(tiny_config(*over), tmp_path / "b")
    train(tiny_config(*over, "noise.seed=1"), tmp_path / "c")
    a, b, c = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt")["model"] for r in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the noise seed matters
