"""Epsilon-sharpness on quadratics whose maximum over the box is known in closed form."""

from __future__ import annotations

import pytest
import torch

from largebatch.analysis.hvp import HessianOperator
from largebatch.analysis.sharpness import box_half_widths, epsilon_sharpness

from .helpers import make_data, make_mlp

D = torch.tensor([4.0, 1.0, 0.5, 2.0, 3.0], dtype=torch.float64)
C = torch.tensor([0.3, -0.2, 1.0, 0.0, -0.5], dtype=torch.float64)


def quadratic(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    """f = 1 + 0.5 sum_i d_i (theta_i - c_i)^2 (the +1 makes the normalisation visible)."""
    r = theta - C
    return 1.0 + 0.5 * float((D * r * r).sum()), D * r


def closed_form(x: torch.Tensor, eps: float) -> float:
    """f is separable and convex in each coordinate, so its max over the box
    |y_i| <= b_i = eps (|x_i| + 1) is at the corner moving each coordinate away from c:
    max f(x + y) = 1 + 0.5 sum d_i (|x_i - c_i| + b_i)^2."""
    b = box_half_widths(x, eps)
    f_max = 1.0 + 0.5 * float((D * ((x - C).abs() + b) ** 2).sum())
    f_x = quadratic(x)[0]
    return 100.0 * (f_max - f_x) / (1.0 + f_x)


@pytest.mark.parametrize("eps", [1e-3, 5e-2])
def test_full_space_away_from_the_minimum(eps):
    x = torch.tensor([1.0, 0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    res = epsilon_sharpness(
        quadratic, x, eps, max_iter=50, generator=torch.Generator().manual_seed(0)
    )
    assert res.sharpness == pytest.approx(closed_form(x, eps), rel=1e-6)
    # The perturbation found is the optimal corner.
    b = box_half_widths(x, eps)
    torch.testing.assert_close(res.perturbation, torch.sign(x - C) * b, rtol=1e-6, atol=1e-12)
    assert res.iterations <= 50


def test_full_space_at_the_minimum():
    # grad f(x) = 0: the seeded random start keeps L-BFGS-B from stalling at y = 0, and every
    # corner is optimal: max = 1 + 0.5 sum d_i b_i^2.
    x = C.clone()
    eps = 1e-2
    res = epsilon_sharpness(
        quadratic, x, eps, max_iter=50, generator=torch.Generator().manual_seed(1)
    )
    assert res.f_x == pytest.approx(1.0)
    assert res.sharpness == pytest.approx(closed_form(x, eps), rel=1e-6)


def test_random_subspace_of_dimension_one():
    # y = a z with one random column a: f(x + a z) = 1 + 0.5 (a^T D a) z^2 at x = c, and the
    # box on z is |z| <= eps (|a^+ x| + 1) with a^+ = a^T / |a|^2.
    x = C.clone()
    eps = 1e-2
    gen = torch.Generator().manual_seed(2)
    res = epsilon_sharpness(quadratic, x, eps, subspace_dim=1, max_iter=50, generator=gen)
    a = torch.randn(5, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)[:, 0]
    z_max = eps * (abs(float(a @ x) / float(a @ a)) + 1)
    f_max = 1.0 + 0.5 * float(a @ (D * a)) * z_max**2
    assert res.f_max == pytest.approx(f_max, rel=1e-8)
    assert res.sharpness == pytest.approx(100 * (f_max - 1.0) / 2.0, rel=1e-8)
    # The perturbation lies along a.
    cos = float(res.perturbation @ a) / float(res.perturbation.norm() * a.norm())
    assert abs(cos) == pytest.approx(1.0, abs=1e-10)


def test_max_iter_caps_the_search():
    x = torch.tensor([1.0, 0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    res = epsilon_sharpness(
        quadratic, x, 1e-3, max_iter=1, generator=torch.Generator().manual_seed(0)
    )
    assert res.iterations <= 1
    assert res.f_max >= res.f_x


def test_on_a_network_the_model_is_untouched():
    model = make_mlp(seed=3)
    x, y = make_data(32, seed=4)
    op = HessianOperator(model, [(x, y)])
    theta = op.parameters_vector()
    res = epsilon_sharpness(
        op.loss_and_gradient_at, theta, 1e-3, max_iter=5, generator=torch.Generator().manual_seed(0)
    )
    assert res.sharpness > 0
    # The reported maximum is the loss at the reported perturbation, which is inside the box.
    assert op.loss_and_gradient_at(theta + res.perturbation)[0] == pytest.approx(res.f_max)
    assert bool((res.perturbation.abs() <= box_half_widths(theta, 1e-3) * (1 + 1e-9)).all())
    torch.testing.assert_close(op.parameters_vector(), theta, rtol=0, atol=0)


def test_bad_arguments():
    x = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="epsilon"):
        epsilon_sharpness(quadratic, x, 0.0)
    with pytest.raises(ValueError, match="subspace dimension"):
        epsilon_sharpness(quadratic, x, 1e-3, subspace_dim=6)
