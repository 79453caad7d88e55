"""The public gradient-norm penalty (:func:`largebatch.gradient_norm_penalty`) against its
equation on least squares and against the engine's update on the same model and batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from largebatch import gradient_norm_penalty
from largebatch.engine.update import Sharpness, UpdateParts, optimizer_update
from largebatch.gradient.base import TransformChain, UpdateInfo
from largebatch.optim.penalty import FORMS

LAM = 0.3
K = 4  # micro-batches per update


def least_squares(seed=0, n=32, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
    return x, y, w


@pytest.mark.parametrize("form", FORMS)
def test_least_squares_gradient_is_the_equation(form):
    """``L_j = |X_j w - y_j|^2 / (2m)``: ``g_j = A_j w - b_j`` with ``A_j = X_j^T X_j / m``, the
    Hessian; the gradient of ``(1/k) sum_j [L_j + (lam/4) |g_j|^2]`` is
    ``(1/k) sum_j (g_j + (lam/2) A_j g_j)``. The loss is quadratic, so the finite difference is
    exact too."""
    x, y, w = least_squares()
    expected, plain = torch.zeros_like(w), torch.zeros_like(w)
    for xj, yj in zip(x.chunk(K), y.chunk(K), strict=True):
        m = len(yj)
        a, b = xj.T @ xj / m, xj.T @ yj / m
        g = a @ w.detach() - b
        expected += (g + LAM / 2 * a @ g) / K
        plain += g / K

        def loss_fn(xj=xj, yj=yj, m=m):
            return (xj @ w - yj).pow(2).sum() / (2 * m)

        loss = gradient_norm_penalty(loss_fn, [w], LAM, form, scale=1 / K)
        assert loss.requires_grad is False
    torch.testing.assert_close(w.grad, expected, rtol=0, atol=1e-12)
    assert (w.grad - plain).abs().max() > 1e-3  # the penalty is not nothing


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    ).double()


def batch(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def state(model):
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


@pytest.mark.parametrize("form", FORMS)
def test_equals_the_engines_update(form):
    """Same model, same batch of 4 micro-batches: the gradients the engine's update leaves (lr 0:
    the weights stay) and the BatchNorm statistics equal the helper's, called per micro-batch with
    ``scale=1/k``."""
    x, y = batch()
    engine_model, own = mlp(), mlp()
    opt = torch.optim.SGD(engine_model.parameters(), lr=0.0)
    if form == "double_backward":
        parts = UpdateParts(engine_model, opt, TransformChain([]), grad_penalty=LAM)
    else:  # the engine's finite-difference form: m-SAM with e_j = (lambda/2) g_j
        parts = UpdateParts(
            engine_model, opt, TransformChain([]), sharpness=Sharpness("msam", LAM / 2, False)
        )
    pairs = list(zip(x.chunk(K), y.chunk(K), strict=True))
    optimizer_update(parts, pairs, len(y), UpdateInfo(step=0, lr=0.0))

    for xj, yj in pairs:
        gradient_norm_penalty(
            lambda xj=xj, yj=yj: F.cross_entropy(own(xj), yj),
            own.parameters(),
            LAM,
            form,
            scale=1 / K,
            model=own,
        )
    for a, b in zip(engine_model.parameters(), own.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-12)
    for a, b in zip(state(engine_model), state(own), strict=True):  # weights and BN statistics
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)

    plain = copy.deepcopy(mlp())
    for xj, yj in pairs:
        (F.cross_entropy(plain(xj), yj) / K).backward()
    differences = [
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(plain.parameters(), own.parameters(), strict=True)
    ]
    assert max(differences) > 1e-6  # the penalty is not nothing


def test_the_two_forms_agree_to_first_order_in_lambda():
    """``|FD - DB| = O(lambda^2)``: a tenth of lambda, about a hundredth of the difference."""
    x, y = batch()

    def grads(form, lam):
        model = mlp()
        loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
        gradient_norm_penalty(loss_fn, model.parameters(), lam, form, model=model)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    diff = [
        (grads("finite_difference", lam) - grads("double_backward", lam)).norm().item()
        for lam in (0.5, 0.05)
    ]
    assert diff[1] < diff[0] / 30


def test_arguments_are_checked():
    _, _, w = least_squares()
    with pytest.raises(ValueError, match="form must be one of"):
        gradient_norm_penalty(lambda: w.sum(), [w], 0.1, form="exact")
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
            gradient_norm_penalty(lambda: w.sum(), [w], bad)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        gradient_norm_penalty(lambda: w.sum(), [w], 0.1, scale=float("nan"))
