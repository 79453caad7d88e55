"""The Hessian on CUDA equals the Hessian on the CPU within float32 tolerance."""

from __future__ import annotations

import copy

import torch

from largebatch.analysis import HessianOperator, hutchinson_trace, lanczos
from largebatch.models.mlp import MLP

from .conftest import GPU

pytestmark = GPU


def problem():
    g = torch.Generator().manual_seed(0)
    model = MLP(40, [32, 32], 10)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(96, 40, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    batches = [(x[:64], y[:64]), (x[64:], y[64:])]  # unequal batches, weighted by size
    return model, batches


def operators(device):
    model, batches = problem()
    cpu = HessianOperator(model, batches)
    moved = copy.deepcopy(model).to(device)
    other = HessianOperator(moved, [(x.to(device), y.to(device)) for x, y in batches])
    return cpu, other


def test_hessian_vector_products_match_the_cpu(device, no_tf32):
    cpu, dev = operators(device)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(cpu.dim, generator=g)
        expected = cpu.matvec(v)
        got = dev.matvec(v.to(device))
        assert got.device.type == device.type
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5 * expected.norm())
    loss_cpu, grad_cpu = cpu.loss_and_gradient()
    loss_dev, grad_dev = dev.loss_and_gradient()
    assert abs(loss_dev - loss_cpu) <= 1e-5 * abs(loss_cpu)
    torch.testing.assert_close(grad_dev.cpu(), grad_cpu, rtol=1e-4, atol=1e-6)


def test_top_eigenvalues_and_trace_match_the_cpu(device, no_tf32):
    cpu, dev = operators(device)
    top_cpu = lanczos(
        cpu.matvec, cpu.dim, k=3, tol=1e-6, generator=torch.Generator().manual_seed(0)
    )
    top_dev = lanczos(
        dev.matvec,
        dev.dim,
        k=3,
        tol=1e-6,
        generator=torch.Generator().manual_seed(0),
        device=device,
    )
    torch.testing.assert_close(
        torch.as_tensor(top_dev.eigenvalues).cpu().double(),
        torch.as_tensor(top_cpu.eigenvalues).double(),
        rtol=1e-4,
        atol=1e-6,
    )
    assert top_dev.converged and top_cpu.converged


def test_hutchinson_trace_matches_the_cpu(device, no_tf32):
    cpu, dev = operators(device)
    # The probes are drawn on the CPU from the generator, so both devices see the same ones.
    est_cpu = hutchinson_trace(cpu.matvec, cpu.dim, 20, generator=torch.Generator().manual_seed(2))
    est_dev = hutchinson_trace(
        dev.matvec, dev.dim, 20, generator=torch.Generator().manual_seed(2), device=device
    )
    assert abs(est_dev.estimate - est_cpu.estimate) <= 1e-4 * abs(est_cpu.estimate) + 1e-6
