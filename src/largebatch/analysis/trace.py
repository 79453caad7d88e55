"""The trace of a symmetric operator from matrix-vector products (Hutchinson's estimator).

For a random vector ``z`` with independent entries of mean 0 and variance 1,
``E[z^T A z] = sum_ij A_ij E[z_i z_j] = tr(A)``. With Rademacher entries (``+-1``, equally likely),
``z_i^2 = 1`` exactly, so the diagonal contributes no variance and

    Var[z^T A z] = 2 sum_{i != j} A_ij^2 = 2 (|A|_F^2 - sum_i A_ii^2),

the smallest variance among such distributions (Hutchinson 1990). With ``n`` probes the estimate
is the mean of ``z_k^T A z_k`` and its standard error is the sample standard deviation of the
per-probe values over ``sqrt(n)``. For the Hessian of a loss, ``tr(H)`` is the sum of all
curvatures, a sharpness measure that does not single out one direction.

:func:`exact_trace` sums ``e_i^T A e_i`` over the ``dim`` unit vectors: ``dim`` products, for
checking the estimator on small operators.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TraceEstimate:
    estimate: float
    """Mean of the per-probe values ``z^T A z``."""
    stderr: float
    """Standard error of the mean: sample std (``n - 1``) of the per-probe values / ``sqrt(n)``
    (NaN for a single probe)."""
    num_probes: int
    num_matvecs: int
    samples: list[float]
    """The per-probe values ``z_k^T A z_k``."""


def rademacher(
    dim: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A vector of independent +-1 entries, drawn on the CPU (same draws on every device)."""
    z = torch.randint(0, 2, (dim,), generator=generator).to(torch.float64).mul_(2).sub_(1)
    return z.to(device=device, dtype=dtype)


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    num_probes: int = 100,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """Estimate ``tr(A)`` with ``num_probes`` Rademacher probes.

    Args:
        matvec: ``v -> A v`` for ``v`` of shape ``(dim,)``.
        dim: the dimension of ``A``.
        num_probes: ``n``; one product each.
        generator: seeds the probes (a CPU ``torch.Generator``).
        dtype, device: of the probe vectors.

    Example (on a diagonal operator every Rademacher probe is exact, since ``z_i^2 = 1``):

    >>> d = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    >>> est = hutchinson_trace(lambda v: d * v, 3, 10, generator=torch.Generator().manual_seed(0))
    >>> est.estimate, est.stderr
    (6.0, 0.0)
    """
    if num_probes <= 0:
        raise ValueError(f"num_probes must be > 0, got {num_probes}")
    samples = []
    for _ in range(num_probes):
        z = rademacher(dim, generator, dtype, device)
        samples.append(float(torch.dot(z, matvec(z))))
    values = torch.tensor(samples, dtype=torch.float64)
    stderr = float(values.std(correction=1)) / math.sqrt(num_probes) if num_probes > 1 else math.nan
    return TraceEstimate(
        estimate=float(values.mean()),
        stderr=stderr,
        num_probes=num_probes,
        num_matvecs=num_probes,
        samples=samples,
    )


def exact_trace(
    matvec: MatVec,
    dim: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> float:
    """``tr(A) = sum_i e_i^T A e_i`` with ``dim`` products (small operators only)."""
    total = 0.0
    for i in range(dim):
        e = torch.zeros(dim, dtype=dtype, device=device)
        e[i] = 1.0
        total += float(matvec(e)[i])
    return total
