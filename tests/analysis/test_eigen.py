"""Lanczos, power iteration and SLQ against operators with a known spectrum."""

from __future__ import annotations

import pytest
import torch

from largebatch.analysis.eigen import lanczos, power_iteration, spectral_density

from .helpers import spd_with_spectrum

# 60 eigenvalues: three separated outliers 9, 6, 4 above a bulk in [-0.5, 2].
SPECTRUM = torch.cat([torch.tensor([9.0, 6.0, 4.0]), torch.linspace(-0.5, 2.0, 57)]).to(
    torch.float64
)
TOP3 = torch.tensor([9.0, 6.0, 4.0], dtype=torch.float64)


def quadratic_hessian(seed: int = 0) -> torch.Tensor:
    """The Hessian of 0.5 x^T A x is A: a symmetric matrix with SPECTRUM."""
    return spd_with_spectrum(SPECTRUM, seed)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_lanczos_top_k_matches_known_spectrum():
    a = quadratic_hessian()
    res = lanczos(lambda v: a @ v, 60, k=3, tol=1e-10, generator=gen(1))
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, TOP3, rtol=1e-5, atol=0)
    # Eigenvectors: unit, and A u = lambda u.
    u = res.eigenvectors
    torch.testing.assert_close(u.norm(dim=0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(a @ u, u * res.eigenvalues, atol=1e-6, rtol=0)
    assert res.num_matvecs == len(res.history) < 60


def test_lanczos_counts_every_product():
    a = quadratic_hessian()
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    res = lanczos(matvec, 60, k=2, tol=1e-8, generator=gen(2))
    assert res.num_matvecs == len(calls)


def test_power_iteration_agrees_with_lanczos():
    a = quadratic_hessian(seed=3)
    lz = lanczos(lambda v: a @ v, 60, k=3, tol=1e-10, generator=gen(4))
    pw = power_iteration(lambda v: a @ v, 60, k=3, tol=1e-12, max_iter=3000, generator=gen(4))
    assert pw.converged
    torch.testing.assert_close(pw.eigenvalues, TOP3, rtol=1e-5, atol=0)
    torch.testing.assert_close(pw.eigenvalues, lz.eigenvalues, rtol=1e-5, atol=0)
    # Same eigenvectors up to sign.
    overlap = (pw.eigenvectors * lz.eigenvectors).sum(dim=0).abs()
    torch.testing.assert_close(overlap, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_lanczos_needs_fewer_products_than_power_iteration():
    a = quadratic_hessian(seed=5)
    lz = lanczos(lambda v: a @ v, 60, k=1, tol=1e-8, generator=gen(6))
    pw = power_iteration(lambda v: a @ v, 60, k=1, tol=1e-10, max_iter=5000, generator=gen(6))
    assert lz.num_matvecs < pw.num_matvecs


def test_which_largest_vs_magnitude():
    # The largest-magnitude eigenvalue is negative: "largest" must not return it.
    values = torch.tensor([-10.0, 3.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    a = spd_with_spectrum(values, seed=7)
    largest = lanczos(lambda v: a @ v, 6, k=1, tol=1e-12, generator=gen(0))
    magnitude = lanczos(lambda v: a @ v, 6, k=1, tol=1e-12, generator=gen(0), which="magnitude")
    assert largest.eigenvalues[0].item() == pytest.approx(3.0, rel=1e-8)
    assert magnitude.eigenvalues[0].item() == pytest.approx(-10.0, rel=1e-8)
    power = power_iteration(lambda v: a @ v, 6, k=1, tol=1e-14, max_iter=2000, generator=gen(0))
    assert power.eigenvalues[0].item() == pytest.approx(-10.0, rel=1e-6)


def test_lanczos_restarts_to_find_repeated_eigenvalues():
    # A Krylov space from one vector holds a single copy of each distinct eigenvalue; the
    # top-3 here are 5, 5, 5, reachable only by restarting after the breakdown.
    a = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    res = lanczos(lambda v: a @ v, 8, k=3, tol=1e-10, generator=gen(8))
    torch.testing.assert_close(res.eigenvalues, torch.full((3,), 5.0, dtype=torch.float64))
    gram = res.eigenvectors.T @ res.eigenvectors
    torch.testing.assert_close(gram, torch.eye(3, dtype=torch.float64), atol=1e-8, rtol=0)


def test_k_larger_than_dimension_is_an_error():
    a = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="1 <= k <= 4"):
        lanczos(lambda v: a @ v, 4, k=5)
    with pytest.raises(ValueError, match="1 <= k <= 4"):
        power_iteration(lambda v: a @ v, 4, k=5)


def test_seeded_start_vector_is_reproducible():
    a = quadratic_hessian()
    r1 = lanczos(lambda v: a @ v, 60, k=1, tol=1e-3, generator=gen(11))
    r2 = lanczos(lambda v: a @ v, 60, k=1, tol=1e-3, generator=gen(11))
    assert r1.history == r2.history


def test_slq_moments_and_nodes():
    a = quadratic_hessian(seed=9)
    dim = 60
    # With m = dim steps and no breakdown, each run's nodes are the eigenvalues themselves.
    full = spectral_density(lambda v: a @ v, dim, num_runs=2, num_steps=dim, generator=gen(1))
    for r in range(2):
        nodes = full.nodes[r][~torch.isnan(full.nodes[r])]
        torch.testing.assert_close(nodes.sort().values, SPECTRUM.sort().values, atol=1e-6, rtol=0)
    # A short run: weights sum to 1 per run, the density integrates to ~1, and the first
    # moment of the quadrature is exact: sum_j tau_j theta_j = v^T A v (v unit).
    dens = spectral_density(lambda v: a @ v, dim, num_runs=4, num_steps=12, generator=gen(2))
    assert dens.num_matvecs == 4 * 12
    torch.testing.assert_close(dens.weights.sum(dim=1), torch.ones(4, dtype=torch.float64))
    area = torch.trapezoid(dens.density, dens.grid)
    assert area.item() == pytest.approx(1.0, abs=1e-3)
    g = gen(2)  # replays the probes: one Rademacher draw per run, no restarts
    for r in range(4):
        v = torch.randint(0, 2, (dim,), generator=g).double() * 2 - 1
        v = v / v.norm()
        first_moment = (dens.weights[r] * dens.nodes[r]).sum()
        assert first_moment.item() == pytest.approx((v @ a @ v).item(), rel=1e-10)
    # The density's mean estimates tr(A) / dim.
    mean = torch.trapezoid(dens.density * dens.grid, dens.grid).item()
    assert mean == pytest.approx(SPECTRUM.mean().item(), abs=0.3)
