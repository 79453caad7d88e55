"""Keskar et al.'s epsilon-sharpness: how much the loss can rise inside a small box.

Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (2017), "On large-batch training for deep learning:
generalization gap and sharp minima", Metric 2.1. For a loss ``f`` at parameters ``x`` in ``R^n``,
a box ``C_eps = {y : |y_i| <= eps (|x_i| + 1)}`` and optionally a random ``n x p`` matrix ``A``
(random subspace of dimension ``p``, full space when ``A = I``),

    phi_{x,f}(eps, A) = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)).

In a subspace, the box is defined on the coordinates ``z`` of ``A``'s columns and scaled by the
coordinates of ``x`` in that basis, ``A^+ x`` (Moore-Penrose pseudo-inverse):
``|z_i| <= eps (|(A^+ x)_i| + 1)``. The box grows with ``|x_i|`` so that the measure does not
depend on how each parameter is scaled, and the ``+1`` keeps it open where ``x_i = 0``.

The inner maximisation is solved approximately, as in the paper, with L-BFGS-B under the box
bounds and a cap on its iterations (Keskar et al. used a few iterations; the value is reported).
Since L-BFGS-B is a local method, the result is a lower bound on the true maximum. The search
starts at a small seeded random point inside the box, so that an exact stationary point
(``grad f(x) = 0``) does not stop it at ``y = 0``.

``f`` is any callable ``theta -> (loss, gradient)`` on flat vectors, e.g.
:meth:`largebatch.analysis.hvp.HessianOperator.loss_and_gradient_at` for a network on fixed samples,
or a quadratic for a closed-form check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

LossAndGrad = Callable[[torch.Tensor], tuple[float, torch.Tensor]]


@dataclass
class SharpnessResult:
    sharpness: float
    """``100 * (f_max - f_x) / (1 + f_x)``."""
    f_x: float
    f_max: float
    """The largest loss found inside the box (at least ``f_x``)."""
    perturbation: torch.Tensor
    """``A y`` (full space: ``y``) at which ``f_max`` was found; zeros if none beat ``f_x``."""
    epsilon: float
    subspace_dim: int | None
    """``p``, or None for the full space."""
    max_iter: int
    num_evaluations: int
    """Loss-and-gradient evaluations, ``f(x)`` included."""
    iterations: int
    """L-BFGS-B iterations used."""
    message: str
    """L-BFGS-B's stopping message."""


@dataclass
class _Best:
    """The largest loss seen so far during the search, where, and how many evaluations."""

    value: float
    y: torch.Tensor
    count: int = 1


def box_half_widths(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``eps * (|x_i| + 1)``: the half-widths of Keskar's box around ``x``."""
    return epsilon * (x.abs() + 1)


def random_subspace(
    n: int, p: int, generator: torch.Generator | None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """An ``n x p`` matrix of independent standard normal entries (drawn on the CPU)."""
    if not 1 <= p <= n:
        raise ValueError(f"the subspace dimension must be in 1..{n} (the parameter count), got {p}")
    return torch.randn(n, p, generator=generator, dtype=torch.float64).to(dtype)


def epsilon_sharpness(
    f: LossAndGrad,
    x: torch.Tensor,
    epsilon: float = 1e-3,
    *,
    subspace_dim: int | None = None,
    max_iter: int = 10,
    generator: torch.Generator | None = None,
    start_fraction: float = 0.01,
) -> SharpnessResult:
    """Keskar's epsilon-sharpness of ``f`` at ``x``.

    Args:
        f: ``theta -> (f(theta), grad f(theta))`` for flat ``theta`` like ``x``.
        x: the point (flat vector); its dtype and device are what ``f`` receives.
        epsilon: the relative box size (Keskar et al. report 1e-3 and 5e-4).
        subspace_dim: ``p`` for a random subspace ``y = A z``; None for the full space.
        max_iter: the cap on L-BFGS-B iterations.
        generator: seeds ``A`` and the start point (a CPU ``torch.Generator``).
        start_fraction: the start point is uniform in ``start_fraction`` times the box.

    Returns:
        A :class:`SharpnessResult`.

    Example: ``f = 0.5 (t_1^2 + 4 t_2^2)`` at its minimum 0 with ``eps = 0.1``: the box is
    ``|y_i| <= 0.1``, so ``max f = 0.5 (0.01 + 0.04) = 0.025`` and the sharpness is 2.5.

    >>> d = torch.tensor([1.0, 4.0], dtype=torch.float64)
    >>> quad = lambda t: (0.5 * float(t @ (d * t)), d * t)
    >>> gen = torch.Generator().manual_seed(0)
    >>> res = epsilon_sharpness(quad, torch.zeros(2, dtype=torch.float64), 0.1, generator=gen)
    >>> round(res.f_max, 8), round(res.sharpness, 6)
    (0.025, 2.5)
    """
    from scipy.optimize import Bounds, minimize  # imported here: 0.4 s that the CLI rarely needs

    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if max_iter <= 0:
        raise ValueError(f"max_iter must be > 0, got {max_iter}")
    if x.dim() != 1:
        raise ValueError(f"x must be a flat vector, got shape {tuple(x.shape)}")
    x = x.detach()
    n = x.numel()
    x64 = x.to(torch.float64)
    if subspace_dim is None:
        basis = None
        half = box_half_widths(x64, epsilon)
    else:
        basis = random_subspace(n, subspace_dim, generator).to(x.device)
        coords = torch.linalg.pinv(basis) @ x64  # A^+ x, (p,)
        half = box_half_widths(coords, epsilon)
    half_np = half.cpu().numpy()

    f_x, _ = f(x)
    best = _Best(value=f_x, y=torch.zeros_like(x))

    def perturbation(z: np.ndarray) -> torch.Tensor:
        zt = torch.from_numpy(z).to(x.device)
        return zt if basis is None else basis @ zt

    def negated(z: np.ndarray) -> tuple[float, np.ndarray]:
        y = perturbation(z)
        value, grad = f((x64 + y).to(x.dtype))
        best.count += 1
        if value > best.value:
            best.value, best.y = value, y.to(x.dtype)
        grad64 = grad.detach().to(x.device, torch.float64)
        if basis is not None:
            grad64 = basis.T @ grad64  # chain rule: d f(x + A z) / dz = A^T grad f
        return -float(value), -grad64.cpu().numpy()

    u = torch.rand(half.numel(), generator=generator, dtype=torch.float64).numpy()
    z0 = start_fraction * half_np * (2 * u - 1)
    result = minimize(
        negated,
        z0,
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(-half_np, half_np),
        options={"maxiter": max_iter},
    )
    f_max = max(best.value, f_x)
    return SharpnessResult(
        sharpness=100.0 * (f_max - f_x) / (1.0 + f_x),
        f_x=f_x,
        f_max=f_max,
        perturbation=best.y,
        epsilon=epsilon,
        subspace_dim=subspace_dim,
        max_iter=max_iter,
        num_evaluations=best.count,
        iterations=int(result.nit),
        message=str(result.message),
    )
