"""The Hessian operator against the exact Hessian of a tiny network."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from largebatch.analysis.eigen import lanczos
from largebatch.analysis.hvp import HessianOperator, fixed_batches, flatten, unflatten
from largebatch.analysis.trace import exact_trace, hutchinson_trace
from largebatch.data import TensorSplit
from largebatch.models.ghost_batchnorm import convert_to_ghost_batchnorm

from .helpers import (
    assert_same_state,
    make_bn_net,
    make_data,
    make_mlp,
    state_snapshot,
)


def exact_hessian(model, x, y) -> torch.Tensor:
    """The full P x P Hessian of the mean cross-entropy, by torch.autograd.functional.hessian."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        tensors = dict(zip(names, unflatten(theta, params), strict=True))
        return F.cross_entropy(functional_call(model, tensors, (x,)), y)

    return torch.autograd.functional.hessian(loss, flatten(params))


@pytest.fixture
def mlp_and_hessian():
    model = make_mlp()
    x, y = make_data(40)
    return model, (x, y), exact_hessian(model, x, y)


def test_flatten_unflatten_round_trip():
    tensors = [torch.randn(2, 3), torch.randn(4), torch.randn(1, 1, 2)]
    flat = flatten(tensors)
    assert flat.shape == (12,)
    for a, b in zip(unflatten(flat, tensors), tensors, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="12 entries"):
        unflatten(torch.zeros(11), tensors)


def test_matvec_matches_exact_hessian(mlp_and_hessian):
    model, (x, y), hessian = mlp_and_hessian
    op = HessianOperator(model, [(x, y)])
    assert op.dim == hessian.shape[0] == 5 * 8 + 8 + 8 * 3 + 3
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=1e-10, atol=1e-12)
    assert op.num_matvecs == 3
    # A float32 vector comes back as float32 (computed in the model's float64).
    v32 = torch.randn(op.dim, generator=g)
    assert op.matvec(v32).dtype == torch.float32


def test_lanczos_top3_and_trace_of_the_network_hessian(mlp_and_hessian):
    model, (x, y), hessian = mlp_and_hessian
    op = HessianOperator(model, [(x, y)])
    exact_values = torch.linalg.eigvalsh(hessian).flip(0)[:3]
    res = lanczos(op.matvec, op.dim, k=3, tol=1e-8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.eigenvalues, exact_values, rtol=1e-4, atol=0)
    assert res.num_matvecs == op.num_matvecs
    exact = torch.trace(hessian).item()
    assert exact_trace(op.matvec, op.dim) == pytest.approx(exact, rel=1e-10)
    est = hutchinson_trace(op.matvec, op.dim, 60, generator=torch.Generator().manual_seed(2))
    assert abs(est.estimate - exact) <= 3 * est.stderr


def test_unequal_batches_equal_the_concatenated_batch():
    model = make_mlp(seed=3)
    x, y = make_data(20, seed=4)
    pieces = [(x[:3], y[:3]), (x[3:10], y[3:10]), (x[10:], y[10:])]
    whole = HessianOperator(model, [(x, y)])
    split = HessianOperator(model, pieces)
    assert split.num_samples == 20
    v = torch.randn(whole.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(split.matvec(v), whole.matvec(v), rtol=1e-12, atol=1e-14)
    loss_w, grad_w = whole.loss_and_gradient()
    loss_s, grad_s = split.loss_and_gradient()
    assert loss_s == pytest.approx(loss_w, rel=1e-12)
    torch.testing.assert_close(grad_s, grad_w, rtol=1e-12, atol=1e-14)
    # An unweighted mean of the batch means would be different: the weights matter.
    naive = sum(F.cross_entropy(model(xb), yb) for xb, yb in pieces).item() / 3
    assert abs(naive - loss_w) > 1e-6


def test_gradient_and_loss_at_other_parameters():
    model = make_mlp(seed=6)
    x, y = make_data(30, seed=7)
    op = HessianOperator(model, [(x[:11], y[:11]), (x[11:], y[11:])])
    theta = op.parameters_vector()
    loss, grad = op.loss_and_gradient()
    loss_at, grad_at = op.loss_and_gradient_at(theta)
    assert loss_at == pytest.approx(loss, rel=1e-12)
    torch.testing.assert_close(grad_at, grad)
    # Away from the model's parameters: equals a copy of the model moved there.
    moved = theta + 0.1 * torch.randn(op.dim, generator=torch.Generator().manual_seed(8)).double()
    other = copy.deepcopy(model)
    with torch.no_grad():
        params = list(other.parameters())
        for p, q in zip(params, unflatten(moved, params), strict=True):
            p.copy_(q)
    expected = F.cross_entropy(other(x), y)
    expected_grad = flatten(torch.autograd.grad(expected, list(other.parameters())))
    loss_m, grad_m = op.loss_and_gradient_at(moved)
    assert loss_m == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(grad_m, expected_grad)
    torch.testing.assert_close(op.parameters_vector(), theta, rtol=0, atol=0)


@pytest.mark.parametrize("ghost", [False, True])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bn_model_state_is_left_exactly_as_found(mode, ghost):
    model = make_bn_net()
    if ghost:  # the toolkit's Ghost BatchNorm (chunks of 4) behaves the same way
        model = convert_to_ghost_batchnorm(model, 4)
    model.train()  # a mixed state to restore: training, except one submodule
    model.fc2.eval()
    x, y = make_data(24, seed=9)
    # Give every parameter a .grad that must survive.
    F.cross_entropy(model(x), y).backward()
    before = state_snapshot(model)
    op = HessianOperator(model, [(x[:10], y[:10]), (x[10:], y[10:])], bn_mode=mode)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op.matvec(v)
    op.loss_and_gradient()
    op.loss_and_gradient_at(op.parameters_vector() + 0.01)
    assert_same_state(before, state_snapshot(model))


def test_bn_modes_use_the_statistics_they_name():
    model = make_bn_net()
    x, y = make_data(24, seed=10)
    reference = copy.deepcopy(model)
    eval_loss = HessianOperator(model, [(x, y)], bn_mode="eval").loss()
    train_loss = HessianOperator(model, [(x, y)], bn_mode="train").loss()
    with torch.no_grad():
        reference.eval()
        assert eval_loss == pytest.approx(F.cross_entropy(reference(x), y).item(), rel=1e-12)
        # Batch statistics, dropout off: BN layer in train mode, dropout in eval mode.
        reference.bn.train()
        assert train_loss == pytest.approx(F.cross_entropy(reference(x), y).item(), rel=1e-12)
    assert abs(eval_loss - train_loss) > 1e-6
    # Dropout is off: repeated evaluations agree exactly.
    op = HessianOperator(model, [(x, y)], bn_mode="train")
    v = torch.ones(op.dim, dtype=torch.float64)
    assert torch.equal(op.matvec(v), op.matvec(v))


def test_bad_bn_mode_and_vector_shape():
    model = make_mlp()
    x, y = make_data(4)
    with pytest.raises(ValueError, match="bn_mode"):
        HessianOperator(model, [(x, y)], bn_mode="batch")
    op = HessianOperator(model, [(x, y)])
    with pytest.raises(ValueError, match="shape"):
        op.matvec(torch.zeros(op.dim + 1, dtype=torch.float64))


def test_fixed_batches_are_a_seeded_subset():
    x, y = make_data(50)
    split = TensorSplit(x, y)
    batches, idx = fixed_batches(split, 23, 10, seed=4)
    assert [len(b[1]) for b in batches] == [10, 10, 3]
    assert len(set(idx.tolist())) == 23
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x[idx])
    again, idx2 = fixed_batches(split, 23, 10, seed=4)
    assert torch.equal(idx, idx2)
    _, idx3 = fixed_batches(split, 23, 10, seed=5)
    assert not torch.equal(idx, idx3)
    _, everything = fixed_batches(split, 500, 10, seed=0)
    assert len(everything) == 50
