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


# Near-degenerate top pair (10 and 9.999), then a gap, then a bulk; a negative outlier in the
# middle of the magnitudes checks the order.
NEAR = torch.cat([torch.tensor([10.0, 9.999, -7.0, 5.0]), torch.linspace(-1.0, 1.0, 36)]).to(
    torch.float64
)


def true_residuals(a: torch.Tensor, res) -> torch.Tensor:
    u, lam = res.eigenvectors, res.eigenvalues
    return (a @ u - u * lam).norm(dim=0)


def test_power_iteration_reports_the_true_residual_and_does_not_claim_convergence():
    a = spd_with_spectrum(NEAR, seed=11)
    res = power_iteration(lambda v: a @ v, 40, k=1, tol=1e-6, max_iter=200, generator=gen(3))
    # residuals are |A u - lambda u| of the returned pair, not the last change of an estimate
    # (which is ~1e-12 here: the estimate creeps, so a change test stops at once).
    torch.testing.assert_close(res.residuals, true_residuals(a, res), rtol=1e-8, atol=1e-12)
    # 200 products cannot separate 10 from 9.999: the vector is a mixture, and it says so.
    assert not res.converged
    assert res.residuals[0] > 1e-6 * 10
    assert res.which == "magnitude"
    # Two vectors span both: the Rayleigh-Ritz step separates them, and converged is earned.
    res = power_iteration(lambda v: a @ v, 40, k=2, tol=1e-6, max_iter=200, generator=gen(3))
    assert res.converged
    expected = torch.tensor([10.0, 9.999], dtype=torch.float64)
    # The eigenvalue error is at most the residual (Weyl / Bauer-Fike for symmetric A).
    assert bool(((res.eigenvalues - expected).abs() <= res.residuals).all())
    assert bool((res.residuals <= 1e-6 * expected).all())


def test_power_iteration_converged_means_residuals_within_tolerance():
    a = spd_with_spectrum(NEAR, seed=12)
    tol = 1e-8
    res = power_iteration(lambda v: a @ v, 40, k=4, tol=tol, max_iter=400, generator=gen(5))
    bound = tol * res.eigenvalues.abs()
    assert res.converged == bool((res.residuals <= bound).all())
    torch.testing.assert_close(res.residuals, true_residuals(a, res), rtol=1e-8, atol=1e-12)


def test_power_iteration_returns_decreasing_magnitude():
    a = spd_with_spectrum(NEAR, seed=13)
    for seed in range(4):
        res = power_iteration(lambda v: a @ v, 40, k=4, tol=1e-6, max_iter=60, generator=gen(seed))
        mags = res.eigenvalues.abs()
        assert bool((mags[:-1] >= mags[1:]).all()), res.eigenvalues
        # The columns follow the values: each residual belongs to its own pair.
        torch.testing.assert_close(res.residuals, true_residuals(a, res), rtol=1e-8, atol=1e-12)


def test_power_iteration_separated_spectrum_converges_to_the_truth():
    values = torch.cat([torch.tensor([8.0, -6.0, 3.0]), torch.linspace(-1.0, 1.0, 27)])
    a = spd_with_spectrum(values.to(torch.float64), seed=14)
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    res = power_iteration(matvec, 30, k=3, tol=1e-10, max_iter=2000, generator=gen(1))
    assert res.converged
    expected = torch.tensor([8.0, -6.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-9, atol=0)
    assert bool((res.residuals <= 1e-10 * expected.abs()).all())
    assert res.num_matvecs == len(calls) == len(res.history) + 3


def test_lanczos_records_which_end_of_the_spectrum():
    a = spd_with_spectrum(NEAR, seed=15)
    assert lanczos(lambda v: a @ v, 40, k=1, generator=gen(0)).which == "largest"
    res = lanczos(lambda v: a @ v, 40, k=1, generator=gen(0), which="magnitude")
    assert res.which == "magnitude"


def test_the_hessian_record_says_which_end_of_the_spectrum():
    from largebatch.analysis.commands import eigen_record

    a = spd_with_spectrum(NEAR, seed=16)
    for solver, which in ((lanczos, "largest_algebraic"), (power_iteration, "largest_magnitude")):
        res = solver(lambda v: a @ v, 40, k=2, tol=1e-8, generator=gen(0))
        rec = eigen_record(res)
        assert rec["eigen_which"] == which
        assert rec["eigenvalues"] == res.eigenvalues.tolist()
        assert rec["eigen_residuals"] == res.residuals.tolist()
        assert rec["eigen_converged"] is res.converged
