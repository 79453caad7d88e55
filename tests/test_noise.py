"""Statistics and semantics of the gradient-noise transform (the paper's method)."""

import math

import pytest
import torch
from torch import nn

from largebatch import GradientNoise, noise_variance
from largebatch.checkpoint import load_checkpoint
from largebatch.config import load_config
from largebatch.engine import train
from largebatch.gradient.base import TransformChain, UpdateInfo


def zero_grad_model(sizes=((400, 250), (250,), (100, 50))) -> list[nn.Parameter]:
    params = [nn.Parameter(torch.zeros(s)) for s in sizes]
    for p in params:
        p.grad = torch.zeros_like(p)
    return params


def drawn(params):
    return torch.cat([p.grad.flatten() for p in params])


def test_variance_formula():
    assert noise_variance(1e-5, 0.55, 0) == 1e-5
    assert noise_variance(1e-5, 0.55, 99) == pytest.approx(1e-5 / 100**0.55)


@pytest.mark.parametrize("t", [0, 10_000])
def test_empirical_variance_matches_alpha_over_one_plus_t_to_the_gamma(t):
    params = zero_grad_model()
    noise = GradientNoise(params, alpha=1e-5, gamma=0.55, seed=0)
    noise.t = t
    noise()
    x = drawn(params).double()
    n = x.numel()  # 105_250
    expected = 1e-5 / (1 + t) ** 0.55
    # The sample variance of n normals has relative standard deviation sqrt(2 / n): 5 sigma.
    assert abs(x.var().item() / expected - 1) < 5 * math.sqrt(2 / n)
    assert abs(x.mean().item()) < 5 * math.sqrt(expected / n)
    # alpha is a variance: the standard deviation is its square root, not alpha itself.
    assert x.std().item() == pytest.approx(math.sqrt(expected), rel=0.02)
    assert noise.t == t + 1


def test_entries_independent_across_parameters_and_steps():
    params = zero_grad_model(((300, 300), (300, 300)))
    noise = GradientNoise(params, alpha=1.0, gamma=0.0, seed=1)
    noise()
    a, b = params[0].grad.flatten().clone(), params[1].grad.flatten().clone()
    for p in params:
        p.grad.zero_()
    noise()
    a2 = params[0].grad.flatten()
    bound = 5 / math.sqrt(a.numel())
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < bound
    assert abs(torch.corrcoef(torch.stack([a, a2]))[0, 1].item()) < bound
    # neighbouring entries are not correlated either
    assert abs(torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1].item()) < bound


def test_same_seed_same_noise_other_seed_other_noise():
    outs = []
    for seed in (7, 7, 8):
        params = zero_grad_model()
        GradientNoise(params, alpha=1e-5, seed=seed)()
        outs.append(drawn(params))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_noise_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    GradientNoise(zero_grad_model(), alpha=1e-5, seed=0)()
    assert torch.equal(torch.rand(5), expected)


def test_alpha_zero_leaves_gradients_bit_identical():
    params = zero_grad_model()
    for p in params:
        p.grad.normal_()
    before = [p.grad.clone() for p in params]
    noise = GradientNoise(params, alpha=0.0)
    noise()
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
    assert noise.t == 1


def test_attach_runs_once_per_step_and_equals_a_manual_call():
    def run(attach: bool):
        torch.manual_seed(0)
        model = nn.Linear(6, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        noise = GradientNoise(model.parameters(), alpha=1e-2, seed=3)
        if attach:
            noise.attach(opt)
        x = torch.randn(16, 6)
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            if not attach:
                noise()
            opt.step()
        return model.weight.detach().clone(), noise.t

    w_hook, t_hook = run(True)
    w_manual, t_manual = run(False)
    assert t_hook == t_manual == 3
    assert torch.equal(w_hook, w_manual)


def test_exclude_bias_and_norm():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    noise = GradientNoise(model.parameters(), alpha=1.0, include_bias_and_norm=False)
    assert [p.ndim for p in noise.params] == [2]


def test_state_dict_replays_the_same_noise():
    params = zero_grad_model()
    noise = GradientNoise(params, alpha=1.0, seed=5)
    noise()
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in noise.state_dict().items()}
    for p in params:
        p.grad.zero_()
    noise()
    expected = drawn(params).clone()
    params2 = zero_grad_model()
    other = GradientNoise(params2, alpha=1.0, seed=99)
    other.load_state_dict(state)
    other()
    assert torch.equal(drawn(params2), expected)
    assert other.t == 2


def test_update_placement_bypasses_momentum():
    """placement=update: w -= lr * sigma * n after the step; momentum never sees the noise."""
    w = nn.Parameter(torch.zeros(1000))
    opt = torch.optim.SGD([w], lr=0.5, momentum=0.9)
    noise = GradientNoise([w], alpha=1.0, gamma=0.0, seed=0, placement="update")
    chain = TransformChain([noise])
    w.grad = torch.zeros_like(w)
    chain.before_step(UpdateInfo(step=0, lr=0.5))
    opt.step()
    chain.after_step(UpdateInfo(step=0, lr=0.5))
    first = w.detach().clone()
    ref = torch.Generator().manual_seed(0)
    n0 = torch.randn(1000, generator=ref)
    torch.testing.assert_close(first, -0.5 * n0)
    assert torch.equal(opt.state[w]["momentum_buffer"], torch.zeros(1000))


def test_engine_adds_noise_once_per_update_and_resumes_it(tmp_path, tiny_mnist1d_overrides):
    over = [*tiny_mnist1d_overrides, "train.epochs=4", "noise.alpha=1e-3", "noise.seed=4"]
    cfg = load_config(None, over)
    straight = train(cfg, tmp_path / "straight")
    ckpt = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    # 480 train examples / 64 = 7 updates per epoch: the noise counter is the update counter
    assert ckpt["transforms"]["noise"]["t"] == ckpt["step"] == 4 * 7
    assert straight.summary["final"]["noise_variance"] == pytest.approx(1e-3 / 28**0.55)
    train(cfg, tmp_path / "split", stop_after_epochs=1)
    train(cfg, tmp_path / "split", resume=True)
    resumed = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for k in ckpt["model"]:
        assert torch.equal(ckpt["model"][k], resumed["model"][k]), k
    # and the noise really changed the result
    train(load_config(None, [*tiny_mnist1d_overrides, "train.epochs=4"]), tmp_path / "quiet")
    quiet = load_checkpoint(tmp_path / "quiet" / "checkpoints" / "last.pt")
    assert not torch.equal(quiet["model"]["net.1.weight"], ckpt["model"]["net.1.weight"])
