"""Top eigenvalues of a symmetric operator, and its spectral density, from matrix-vector products.

All functions take ``matvec: v -> A v`` for a symmetric ``A`` of size ``dim x dim`` (for instance
:class:`largebatch.analysis.hvp.HessianOperator`) and count the products they use, since each one
costs about two backward passes over the samples.

**Lanczos** (:func:`lanczos`) builds an orthonormal basis ``Q_m = [q_1 .. q_m]`` of the Krylov space
``span{q_1, A q_1, .., A^{m-1} q_1}`` in which ``A`` is tridiagonal,

    A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T,   T_m = tridiag(beta, alpha, beta),

and takes the eigenpairs ``(theta_i, s_i)`` of ``T_m`` as Ritz approximations
``(theta_i, Q_m s_i)``. Each Ritz pair's residual is
``|A Q_m s_i - theta_i Q_m s_i| = beta_m |e_m^T s_i|``, available without any extra product; we
stop when it is below ``tol * |theta_i|`` for the top ``k``. Every new vector is orthogonalised
against all previous ones (twice: "full reorthogonalisation"), which keeps ``Q_m`` orthonormal in
floating point so that no spurious copies of converged eigenvalues appear. The error of the top
Ritz value falls like a Chebyshev polynomial of degree ``m`` evaluated at the relative gap, far
faster than power iteration's ``|lambda_2 / lambda_1|^m`` when the gap is small.

**Power iteration** (:func:`power_iteration`) repeats ``v <- A v / |A v|``; its Rayleigh quotient
``v^T A v`` converges to the eigenvalue of largest *magnitude* at the rate
``|lambda_2 / lambda_1|`` per product. For ``k > 1`` it deflates the pairs already found
(Hotelling): ``A_j = A - sum_{i<j} lambda_i u_i u_i^T``. It stops on the true residual
``|A v - lambda v|``, read from the same product, and returns the pairs sorted by magnitude.

**Stochastic Lanczos quadrature** (:func:`spectral_density`, Ghorbani et al. 2019, after Golub &
Meurant and Lin et al.): the spectral density ``phi(t) = (1/P) sum_i delta(t - lambda_i)`` satisfies
``v^T g(A) v = sum_i (v^T u_i)^2 g(lambda_i)``, with ``E[(v^T u_i)^2] = 1/P`` for a normalised
Rademacher or Gaussian vector ``v``. ``m`` Lanczos steps from ``v`` give the Gauss quadrature rule
with nodes ``theta_j`` (eigenvalues of ``T_m``) and weights ``tau_j = (e_1^T s_j)^2``, exact for
polynomials of degree ``< 2m``. Averaging over ``R`` start vectors and replacing each delta by a
Gaussian of width ``sigma``:

    phi_sigma(t) = (1/R) sum_r sum_j tau_rj N(t; theta_rj, sigma^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]
WHICH = ("largest", "magnitude")
WHICH_NAMES = {"largest": "largest_algebraic", "magnitude": "largest_magnitude"}
"""How :attr:`EigenResult.which` is recorded in ``hessian.json`` (``values.eigen_which``)."""


@dataclass
class EigenResult:
    """Top eigenpairs of a symmetric operator."""

    eigenvalues: torch.Tensor
    """``(k,)``, in decreasing order (of value for ``largest``, of magnitude for ``magnitude``)."""
    eigenvectors: torch.Tensor
    """``(dim, k)``, unit columns."""
    num_matvecs: int
    converged: bool
    """True only when every returned pair's residual is within the tolerance asked for."""
    residuals: torch.Tensor
    """``(k,)``: ``|A u - lambda u|`` of each returned pair, in the order of ``eigenvalues``
    (Lanczos: the Ritz residual ``beta_m |e_m^T s_i|``, equal to it up to rounding under full
    reorthogonalisation; power iteration: computed from the product that measured the pair)."""
    history: list[float] = field(default_factory=list)
    """The top eigenvalue estimate after each matrix-vector product (for convergence studies)."""
    which: str = "largest"
    """Which end of the spectrum: ``largest`` (largest algebraic) or ``magnitude`` (largest
    magnitude); see :data:`WHICH_NAMES` for the words written to the Hessian JSON."""


@dataclass
class SpectralDensity:
    """A Gaussian-broadened spectral density estimated by stochastic Lanczos quadrature."""

    grid: torch.Tensor
    """``(G,)`` points at which the density is evaluated."""
    density: torch.Tensor
    """``(G,)`` the density; it integrates to about 1 over the grid."""
    nodes: torch.Tensor
    """``(R, m)`` Ritz values of each run (``NaN`` padding where a run stopped early)."""
    weights: torch.Tensor
    """``(R, m)`` quadrature weights of each run (each row sums to 1; zeros as padding)."""
    sigma: float
    num_matvecs: int


def _check_k(k: int, dim: int) -> None:
    if dim <= 0:
        raise ValueError(f"dim must be > 0, got {dim}")
    if not 1 <= k <= dim:
        raise ValueError(
            f"k = {k} eigenvalues were asked for, but the operator has dimension {dim}; "
            f"ask for 1 <= k <= {dim}"
        )


def _random_unit(
    dim: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str,
    kind: str = "normal",
) -> torch.Tensor:
    # Drawn on the CPU from the CPU generator, so the vector is the same on every device.
    if kind == "normal":
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
    elif kind == "rademacher":
        v = torch.randint(0, 2, (dim,), generator=generator).to(torch.float64).mul_(2).sub_(1)
    else:
        raise ValueError(f"probe must be 'rademacher' or 'normal', got {kind!r}")
    return (v / v.norm()).to(device=device, dtype=dtype)


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` minus its projection on the orthonormal rows of ``basis``, done twice ("twice is
    enough", Kahan/Parlett) so that orthogonality holds to working precision."""
    if basis.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _lanczos_steps(
    matvec: MatVec,
    q0: torch.Tensor,
    max_steps: int,
    generator: torch.Generator | None,
    restart: bool,
) -> Iterator[tuple[list[float], list[float], torch.Tensor, float]]:
    """Run Lanczos with full reorthogonalisation from the unit vector ``q0``.

    Yields ``(alphas, betas, Q, beta_next)`` after each product: the diagonal (length ``j``), the
    off-diagonal (length ``j - 1``) of ``T_j``, the basis ``Q`` (``(j, dim)``, a view) and the
    norm of the next residual vector. On breakdown (``beta_next ~ 0``: an invariant subspace has
    been found) it either stops or, if ``restart``, continues from a new random vector orthogonal
    to ``Q`` with a zero coupling, so that ``T`` stays the projection of ``A`` on ``span(Q)``.
    """
    dim = q0.numel()
    steps = min(max_steps, dim)
    basis = torch.zeros(steps, dim, dtype=q0.dtype, device=q0.device)
    alphas: list[float] = []
    betas: list[float] = []
    q = q0
    scale = 0.0
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        alpha = float(torch.dot(w, q))
        w = _orthogonalise(w, basis[: j + 1])
        beta = float(w.norm())
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        breakdown = beta <= 100 * torch.finfo(q0.dtype).eps * max(scale, 1e-30)
        yield alphas, betas, basis[: j + 1], 0.0 if breakdown else beta
        if j + 1 == steps:
            return
        if breakdown:
            if not restart:
                return
            q = _orthogonalise(_random_unit(dim, generator, q0.dtype, q0.device), basis[: j + 1])
            q = q / q.norm()
            betas.append(0.0)
        else:
            q = w / beta
            betas.append(beta)


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _top(values: torch.Tensor, k: int, which: str) -> torch.Tensor:
    key = values if which == "largest" else values.abs()
    return torch.argsort(key, descending=True)[:k]


def lanczos(
    matvec: MatVec,
    dim: int,
    k: int = 1,
    *,
    tol: float = 1e-6,
    max_iter: int | None = None,
    generator: torch.Generator | None = None,
    which: str = "largest",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> EigenResult:
    """Top-``k`` eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Args:
        matvec: ``v -> A v`` for ``v`` of shape ``(dim,)``, ``A`` symmetric.
        dim: the dimension of ``A``.
        k: how many eigenpairs (``1 <= k <= dim``).
        tol: stop when every one of the top ``k`` Ritz pairs has residual
            ``|A u - theta u| <= tol * |theta|`` (the eigenvalue error is at most the residual and
            usually near its square over the spectral gap).
        max_iter: the most products (and Krylov dimension); default ``min(dim, max(2k + 40, 100))``.
        generator: seeds the random start vector (a CPU ``torch.Generator``).
        which: ``"largest"`` (algebraic, the default; the sharpest curvature) or ``"magnitude"``.
        dtype, device: of the Lanczos vectors; float64 keeps the tridiagonal matrix accurate.

    Returns:
        An :class:`EigenResult`; ``converged`` is False when ``max_iter`` ran out first.

    Example (any ``matvec`` works, e.g. ``HessianOperator.matvec``):

    >>> a = torch.diag(torch.tensor([3.0, -5.0, 2.0, 1.0], dtype=torch.float64))
    >>> res = lanczos(lambda v: a @ v, 4, k=2, generator=torch.Generator().manual_seed(0))
    >>> [round(v, 8) for v in res.eigenvalues.tolist()], res.num_matvecs
    ([3.0, 2.0], 4)
    """
    _check_k(k, dim)
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    max_iter = min(dim, max(2 * k + 40, 100)) if max_iter is None else min(max_iter, dim)
    if max_iter < k:
        raise ValueError(f"max_iter = {max_iter} is smaller than k = {k}")
    q0 = _random_unit(dim, generator, dtype, device)
    history: list[float] = []
    result = None
    for alphas, betas, basis, beta_next in _lanczos_steps(
        matvec, q0, max_iter, generator, restart=True
    ):
        theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
        order = _top(theta, min(k, len(alphas)), which)
        history.append(float(theta[order[0]]))
        residuals = beta_next * s[-1, order].abs()
        # At a breakdown (beta_next = 0) every residual is 0 but the rest of the space is still
        # unexplored (repeated eigenvalues): only a full basis ends the search there.
        done = len(alphas) == dim or (
            beta_next > 0
            and len(alphas) >= k
            and bool((residuals <= tol * theta[order].abs().clamp_min(1e-30)).all())
        )
        result = (theta[order], s[:, order], basis, residuals, done)
        if done:
            break
    assert result is not None
    values, vectors, basis, residuals, done = result
    eigenvectors = basis.T @ vectors.to(basis.device, basis.dtype)
    eigenvectors = eigenvectors / eigenvectors.norm(dim=0, keepdim=True)
    return EigenResult(
        eigenvalues=values.to(dtype),
        eigenvectors=eigenvectors,
        num_matvecs=len(history),
        converged=done,
        residuals=residuals.to(dtype),
        history=history,
        which=which,
    )


def power_iteration(
    matvec: MatVec,
    dim: int,
    k: int = 1,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> EigenResult:
    """Top-``k`` eigenpairs (by magnitude) by power iteration with Hotelling deflation.

    Pair ``j`` iterates ``v <- A_j v / |A_j v|`` with the deflated ``A_j = A - sum_{i<j}
    lambda_i u_i u_i^T`` until its residual ``|A_j v - lambda v|`` is at most ``tol * |lambda|``
    (or ``max_iter`` products). Deflation passes each pair's error on to the next, so the ``k``
    vectors are then refined together by one Rayleigh-Ritz step (``k`` more products): the
    eigenpairs of ``A`` restricted to their span. That step also gives the *true* residual
    ``|A u - lambda u|`` of every returned pair, which is what ``residuals`` holds and what
    ``converged`` is judged on.

    Args:
        matvec, dim, k, generator, dtype, device: as for :func:`lanczos`.
        tol: relative residual at which a pair has converged, ``|A u - lambda u| <= tol *
            |lambda|`` (the same criterion as :func:`lanczos`; the eigenvalue error is at most
            the residual, the eigenvector's angle error about the residual over the gap).
        max_iter: the most products *per eigenpair*; a pair that runs out is returned as it is,
            and ``converged`` is False.

    Returns:
        An :class:`EigenResult` with ``which == "magnitude"``: eigenvalues in decreasing
        magnitude (sorted after the search: with a near-degenerate spectrum, deflation can find
        them out of order), each column of ``eigenvectors`` and entry of ``residuals`` with its
        value; ``converged`` is True only when every residual is within the tolerance;
        ``history`` holds the estimate after each product, in the order the pairs were searched;
        ``num_matvecs`` is ``len(history) + k`` (the Rayleigh-Ritz products).
    """
    _check_k(k, dim)
    vectors: list[torch.Tensor] = []
    values: list[float] = []
    history: list[float] = []
    for _ in range(k):
        v = _random_unit(dim, generator, dtype, device)
        if vectors:
            v = _orthogonalise(v, torch.stack(vectors))
            v = v / v.norm()
        estimate = math.nan
        for _ in range(max_iter):
            w = matvec(v)
            for lam, u in zip(values, vectors, strict=True):
                w = w - lam * torch.dot(u, v) * u
            estimate = float(torch.dot(v, w))
            history.append(estimate)
            # Residual of the deflated operator: it reaches rounding level, unlike the residual
            # against A, which keeps the earlier pairs' errors (measured below).
            if float((w - estimate * v).norm()) <= tol * max(abs(estimate), 1e-30):
                break
            norm = float(w.norm())
            # v in a null space of the deflated operator, or a product that overflowed: stop.
            if norm == 0 or not math.isfinite(norm):
                break
            v = w / norm
        values.append(estimate)
        vectors.append(v)
    eigenvalues, eigenvectors, residuals = _rayleigh_ritz(matvec, torch.stack(vectors, dim=1))
    order = torch.argsort(eigenvalues.abs(), descending=True, stable=True)
    eigenvalues, residuals = eigenvalues[order], residuals[order]
    return EigenResult(
        eigenvalues=eigenvalues.to(dtype),
        eigenvectors=eigenvectors[:, order.to(eigenvectors.device)],
        num_matvecs=len(history) + k,
        converged=bool((residuals <= tol * eigenvalues.abs().clamp_min(1e-30)).all()),
        residuals=residuals.to(dtype),
        history=history,
        which="magnitude",
    )


def _rayleigh_ritz(
    matvec: MatVec, vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best eigenpairs of ``A`` in ``span(vectors)`` (``(dim, k)``) and their true residuals.

    One product per column: ``T = Q^T A Q`` for an orthonormal basis ``Q`` of the span,
    ``T = S diag(theta) S^T``, Ritz vectors ``X = Q S``, residuals ``|A X - X theta|`` per
    column. Returns ``(theta (k,), X (dim, k), residuals (k,))``, in ``eigh``'s order.
    """
    q, _ = torch.linalg.qr(vectors)
    aq = torch.stack([matvec(q[:, i]) for i in range(q.shape[1])], dim=1)
    t = q.T @ aq
    theta, s = torch.linalg.eigh(((t + t.T) / 2).to(torch.float64))
    s = s.to(q.dtype)
    x, ax = q @ s, aq @ s
    residuals = (ax - x * theta.to(q.dtype)).norm(dim=0)
    return theta, x, residuals.to(torch.float64)


def spectral_density(
    matvec: MatVec,
    dim: int,
    *,
    num_runs: int = 10,
    num_steps: int = 80,
    probe: str = "rademacher",
    sigma: float | None = None,
    grid: torch.Tensor | None = None,
    grid_points: int = 1000,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> SpectralDensity:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature.

    Args:
        matvec, dim, generator, dtype, device: as for :func:`lanczos`.
        num_runs: ``R``, the number of random start vectors.
        num_steps: ``m``, Lanczos steps per run (fewer if a run finds an invariant subspace).
        probe: ``"rademacher"`` (entries +-1) or ``"normal"``; normalised to unit length.
        sigma: width of the Gaussian that replaces each node. Default: 1% of the range of the
            nodes (Ghorbani et al. normalise the spectrum to [-1, 1] and use a variance of 1e-5).
        grid: where to evaluate the density; default ``grid_points`` points spanning the nodes
            plus ``5 sigma`` each side.

    Returns:
        A :class:`SpectralDensity`; ``num_matvecs`` is ``R * m`` at most.
    """
    if num_runs <= 0 or num_steps <= 0:
        raise ValueError(f"num_runs and num_steps must be > 0, got {num_runs}, {num_steps}")
    steps = min(num_steps, dim)
    nodes = torch.full((num_runs, steps), math.nan, dtype=torch.float64)
    weights = torch.zeros(num_runs, steps, dtype=torch.float64)
    num_matvecs = 0
    for r in range(num_runs):
        q0 = _random_unit(dim, generator, dtype, device, kind=probe)
        last: tuple[list[float], list[float]] = ([], [])
        for alphas, betas, _, _ in _lanczos_steps(matvec, q0, steps, generator, restart=False):
            num_matvecs += 1
            last = (alphas, betas)
        alphas, betas = last
        theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
        nodes[r, : len(alphas)] = theta
        weights[r, : len(alphas)] = s[0] ** 2
    valid = ~torch.isnan(nodes)
    lo, hi = float(nodes[valid].min()), float(nodes[valid].max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 1e-3
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if grid is None:
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points, dtype=torch.float64)
    grid = grid.to(torch.float64)
    z = (grid[:, None] - nodes[valid][None, :]) / sigma  # (G, number of valid nodes)
    gauss = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    density = gauss @ weights[valid] / num_runs
    return SpectralDensity(
        grid=grid,
        density=density,
        nodes=nodes,
        weights=weights,
        sigma=float(sigma),
        num_matvecs=num_matvecs,
    )
