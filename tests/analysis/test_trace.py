"""Hutchinson's trace estimator against exact traces."""

from __future__ import annotations

import math

import pytest
import torch

from largebatch.analysis.trace import exact_trace, hutchinson_trace

from .helpers import spd_with_spectrum

SPECTRUM = torch.cat([torch.tensor([9.0, 6.0, 4.0]), torch.linspace(-0.5, 2.0, 57)]).double()


def test_exact_trace_through_unit_vectors():
    a = spd_with_spectrum(SPECTRUM, seed=0)
    assert exact_trace(lambda v: a @ v, 60) == pytest.approx(SPECTRUM.sum().item(), rel=1e-10)


def test_rademacher_probes_are_exact_on_a_diagonal_operator():
    # z_i^2 = 1, so z^T D z = tr(D) for every Rademacher probe: zero variance.
    d = torch.linspace(-1.0, 5.0, 40, dtype=torch.float64)
    est = hutchinson_trace(lambda v: d * v, 40, 7, generator=torch.Generator().manual_seed(0))
    assert est.estimate == pytest.approx(d.sum().item(), rel=1e-12)
    assert est.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_within_three_standard_errors_of_the_exact_trace():
    a = spd_with_spectrum(SPECTRUM, seed=1)
    exact = SPECTRUM.sum().item()
    est = hutchinson_trace(lambda v: a @ v, 60, 400, generator=torch.Generator().manual_seed(2))
    assert est.num_probes == est.num_matvecs == len(est.samples) == 400
    assert abs(est.estimate - exact) <= 3 * est.stderr
    # The standard error is the sample std over sqrt(n), and matches the theory:
    # Var[z^T A z] = 2 (|A|_F^2 - sum_i A_ii^2) for Rademacher z.
    samples = torch.tensor(est.samples, dtype=torch.float64)
    assert est.stderr == pytest.approx(samples.std().item() / math.sqrt(400), rel=1e-12)
    theory = math.sqrt(2 * ((a**2).sum() - (a.diagonal() ** 2).sum()).item() / 400)
    assert est.stderr == pytest.approx(theory, rel=0.25)


def test_seeded_probes_repeat():
    a = spd_with_spectrum(SPECTRUM, seed=1)
    e1 = hutchinson_trace(lambda v: a @ v, 60, 5, generator=torch.Generator().manual_seed(3))
    e2 = hutchinson_trace(lambda v: a @ v, 60, 5, generator=torch.Generator().manual_seed(3))
    assert e1.samples == e2.samples


def test_bad_probe_count():
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson_trace(lambda v: v, 3, 0)
