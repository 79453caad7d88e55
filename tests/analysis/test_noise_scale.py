"""The gradient noise scale on linear regression, where Sigma and G are known in closed form.

Model ``f(x) = w^T x``, loss ``l = 0.5 (w^T x - y)^2``, data ``x ~ N(0, I_d)``,
``y = w*^T x + e`` with ``e ~ N(0, s^2)`` independent. Per-example gradient
``g = (w^T x - y) x = (x^T delta - e) x`` with ``delta = w - w*``, so

    G = E[g] = E[x x^T] delta = delta,
    E[g g^T] = E[(x^T delta)^2 x x^T] + s^2 I = |delta|^2 I + 2 delta delta^T + s^2 I   (Isserlis),
    tr(Sigma) = tr E[g g^T] - |G|^2 = (d + 1) |delta|^2 + d s^2.

At ``w = w*``: ``G = 0`` and ``Sigma = s^2 I``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from largebatch.analysis.noise_scale import (
    gradient_noise_scale,
    injected_noise_variance,
    minibatch_noise_variance,
    noise_comparison,
)

from .helpers import (
    assert_same_state,
    make_bn_net,
    make_data,
    make_mlp,
    state_snapshot,
)

D, N, S = 4, 4000, 0.5


def squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out.squeeze(-1) - y) ** 2).mean()


def regression(delta: torch.Tensor, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(D, generator=g, dtype=torch.float64)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = x @ w_star + S * torch.randn(N, generator=g, dtype=torch.float64)
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    per_example = (x @ (w_star + delta) - y)[:, None] * x  # (N, D), the analytic gradients
    batches = list(zip(x.split(500), y.split(500), strict=True))
    return model, batches, per_example


def trace_and_stderr(grads: torch.Tensor, group_size: int = 1) -> tuple[float, float]:
    """Unbiased tr(Cov) of the rows times group_size, and its standard error."""
    sq = ((grads - grads.mean(0)) ** 2).sum(1)
    m = len(grads)
    return group_size * sq.sum().item() / (m - 1), group_size * sq.std().item() / math.sqrt(m)


def test_per_example_at_a_point_with_nonzero_gradient():
    delta = torch.tensor([0.6, -0.8, 0.0, 0.0], dtype=torch.float64)  # |delta| = 1
    model, batches, grads = regression(delta)
    res = gradient_noise_scale(model, batches, loss_fn=squared_error)
    assert res.method == "per_example" and res.num_samples == N and res.num_params == D
    # Exactly the unbiased formulas on the analytic per-example gradients.
    trace, stderr = trace_and_stderr(grads)
    assert res.trace_sigma == pytest.approx(trace, rel=1e-10)
    mean = grads.mean(0)
    assert res.grad_norm_sq == pytest.approx((mean @ mean).item() - trace / N, rel=1e-10)
    # Close to the population values within the sampling error.
    true_trace = (D + 1) * 1.0 + D * S**2
    assert abs(res.trace_sigma - true_trace) <= 4 * stderr
    # Leading fluctuation of |g_bar|^2: 2 G^T (g_bar - G), variance 4 G^T Sigma G / N,
    # G^T Sigma G = E[(g.delta)^2] - |delta|^4 = 2 |delta|^4 + s^2 |delta|^2.
    se_g2 = math.sqrt(4 * (2 + S**2) / N)
    assert abs(res.grad_norm_sq - 1.0) <= 4 * se_g2
    assert res.b_simple == pytest.approx(res.trace_sigma / res.grad_norm_sq)


def test_at_the_optimum_the_gradient_vanishes():
    model, batches, grads = regression(torch.zeros(D, dtype=torch.float64), seed=1)
    res = gradient_noise_scale(model, batches, loss_fn=squared_error)
    _, stderr = trace_and_stderr(grads)
    assert abs(res.trace_sigma - D * S**2) <= 4 * stderr
    # |G|^2 = 0: the unbiased estimate is within its noise, std sqrt(2 tr(Sigma^2)) / N.
    assert abs(res.grad_norm_sq) <= 4 * math.sqrt(2 * D * S**4) / N
    # The plug-in |g_bar|^2 is biased upward by tr(Sigma) / N; the estimate removes it.
    assert res.mean_grad_norm_sq == pytest.approx(res.grad_norm_sq + res.trace_sigma / N)


def test_per_batch_estimate_agrees():
    delta = torch.tensor([0.6, -0.8, 0.0, 0.0], dtype=torch.float64)
    model, batches, grads = regression(delta, seed=2)
    res = gradient_noise_scale(
        model, batches, loss_fn=squared_error, method="per_batch", group_size=8
    )
    assert res.method == "per_batch" and res.num_groups == N // 8 and res.group_size == 8
    group_means = grads.reshape(N // 8, 8, D).mean(1)
    trace, stderr = trace_and_stderr(group_means, group_size=8)
    assert res.trace_sigma == pytest.approx(trace, rel=1e-10)
    assert abs(res.trace_sigma - ((D + 1) + D * S**2)) <= 4 * stderr


def test_per_example_gradients_of_a_network_match_a_loop():
    model = make_mlp(seed=5)
    x, y = make_data(24, seed=6)
    res = gradient_noise_scale(model, [(x[:10], y[:10]), (x[10:], y[10:])], chunk=7)
    grads = []
    for i in range(24):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])
        )
    trace, _ = trace_and_stderr(torch.stack(grads))
    assert res.trace_sigma == pytest.approx(trace, rel=1e-10)


def test_batchnorm_model_falls_back_to_per_batch_and_is_left_untouched():
    model = make_bn_net()
    model.train()
    before = state_snapshot(model)
    x, y = make_data(64, seed=7)
    res = gradient_noise_scale(model, [(x, y)], group_size=8)
    assert res.method == "per_batch" and res.num_groups == 8
    assert res.trace_sigma > 0
    assert_same_state(before, state_snapshot(model))
    with pytest.raises(ValueError, match="per-example"):
        gradient_noise_scale(model, [(x, y)], method="per_example", bn_mode="train")
    with pytest.raises(ValueError, match="at least 2"):
        gradient_noise_scale(model, [(x[:10], y[:10])], method="per_batch", group_size=8)


def test_injected_and_minibatch_noise():
    assert injected_noise_variance(1e-5, 0.55, 0) == 1e-5
    assert injected_noise_variance(1e-5, 0.55, 99) == pytest.approx(1e-5 / 100**0.55)
    assert minibatch_noise_variance(12.0, 1000, 64) == pytest.approx(12.0 / 64000)
    model, batches, _ = regression(torch.zeros(D, dtype=torch.float64))
    scale = gradient_noise_scale(model, batches, loss_fn=squared_error)
    cmp = noise_comparison(
        scale, alpha=1e-5, gamma=0.55, step=9, batch_size=1024, base_batch_size=64
    )
    assert cmp["injected_variance_per_entry"] == pytest.approx(1e-5 / 10**0.55)
    at_b = scale.trace_sigma / (D * 1024)
    at_base = scale.trace_sigma / (D * 64)
    assert cmp["minibatch_variance_per_entry"] == pytest.approx(at_b)
    assert cmp["variance_removed_by_larger_batch"] == pytest.approx(at_base - at_b)
