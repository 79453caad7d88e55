"""SAM, m-SAM and Momentum-SAM: the optimizers of :mod:`largebatch.optim.sam` and the engine's
update (:func:`largebatch.engine.update.optimizer_update` with a ``Sharpness``).

Every expected value is computed independently of the code under test: in closed form (least
squares, a quadratic), by a by-hand loop, or by the other implementation (wrapper vs engine).
"""

from __future__ import annotations

import copy
import doctest
import importlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from largebatch.config import TrainConfig
from largebatch.engine.update import Sharpness, UpdateParts, optimizer_update
from largebatch.gradient.base import TransformChain, UpdateInfo
from largebatch.losses import training_loss
from largebatch.optim.sam import SAM, MomentumSAM

F64 = torch.float64
LR = 0.1
RHO = 0.3
MU = 0.9


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def assert_all_equal(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def assert_all_close(a, b, atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "module", ["largebatch.optim.sam", "largebatch.optim.perturbation", "largebatch.engine.update"]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------------------------
# Least squares: L(w) = |A w - b|^2 / (2n), w split over two parameters (the norm is global)


class LeastSquares:
    def __init__(self, n: int = 12, d1: int = 3, d2: int = 2, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(n, d1 + d2, generator=g, dtype=F64)
        self.b = torch.randn(n, generator=g, dtype=F64)
        self.w0 = torch.randn(d1 + d2, generator=g, dtype=F64)
        self.d1 = d1

    def params(self) -> list[nn.Parameter]:
        return [nn.Parameter(self.w0[: self.d1].clone()), nn.Parameter(self.w0[self.d1 :].clone())]

    def loss(self, params, rows=slice(None)) -> torch.Tensor:
        A, b = self.A[rows], self.b[rows]
        return (A @ torch.cat(list(params)) - b).pow(2).sum() / (2 * len(b))

    def grad(self, w: torch.Tensor, rows=slice(None)) -> torch.Tensor:
        A, b = self.A[rows], self.b[rows]
        return A.T @ (A @ w - b) / len(b)


@pytest.mark.parametrize("normalize", [True, False])
def test_sam_step_on_least_squares_is_the_closed_form(normalize):
    ls = LeastSquares()
    params = ls.params()
    opt = SAM(torch.optim.SGD(params, lr=LR, momentum=0), rho=RHO, normalize=normalize)

    def closure():
        opt.zero_grad()
        loss = ls.loss(params)
        loss.backward()
        return loss

    loss = opt.step(closure)
    g = ls.grad(ls.w0)
    e = RHO * g / g.norm() if normalize else RHO * g
    g_sam = ls.grad(ls.w0 + e)
    torch.testing.assert_close(flat(params), ls.w0 - LR * g_sam, rtol=0, atol=1e-12)
    # the loss returned is the one at theta, not at theta + e
    assert loss.item() == pytest.approx((ls.A @ ls.w0 - ls.b).pow(2).sum().item() / 24, rel=1e-14)
    assert not opt.perturbed
    assert (g_sam - g).norm() > 1e-2  # the check can tell SAM from plain SGD


def test_sam_with_zero_lr_leaves_the_weights_bit_identical():
    ls = LeastSquares(seed=1)
    params = ls.params()
    opt = SAM(torch.optim.SGD(params, lr=0.0, momentum=MU), rho=0.7)

    def closure():
        opt.zero_grad()
        loss = ls.loss(params)
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
        assert torch.equal(flat(params), ls.w0)  # restored by a copy, not by a subtraction


# ----------------------------------------------------------------------------------------------
# Momentum-SAM on a quadratic L(w) = (w - t)^T H (w - t) / 2


class Quadratic:
    def __init__(self, d1: int = 3, d2: int = 2, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        M = torch.randn(d1 + d2, d1 + d2, generator=g, dtype=F64)
        self.H = M @ M.T + torch.eye(d1 + d2, dtype=F64)
        self.t = torch.randn(d1 + d2, generator=g, dtype=F64)
        self.w0 = torch.randn(d1 + d2, generator=g, dtype=F64)
        self.d1 = d1

    def params(self) -> list[nn.Parameter]:
        return [nn.Parameter(self.w0[: self.d1].clone()), nn.Parameter(self.w0[self.d1 :].clone())]

    def loss(self, params) -> torch.Tensor:
        r = torch.cat(list(params)) - self.t
        return r @ self.H @ r / 2

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        return self.H @ (w - self.t)


def _buffers(opt: torch.optim.Optimizer, params) -> torch.Tensor:
    return flat([opt.state[p]["momentum_buffer"] for p in params])


def test_momentum_sam_first_step_is_sgd_then_gradient_at_theta_minus_rho_v():
    q = Quadratic()
    params, ref_params = q.params(), q.params()
    opt = MomentumSAM(torch.optim.SGD(params, lr=LR, momentum=MU), rho=RHO)
    ref = torch.optim.SGD(ref_params, lr=LR, momentum=MU)
    seen: list[torch.Tensor] = []

    def closure():
        opt.zero_grad()
        seen.append(flat(params).clone())
        loss = q.loss(params)
        loss.backward()
        return loss

    def ref_closure():
        ref.zero_grad()
        loss = q.loss(ref_params)
        loss.backward()
        return loss

    opt.step(closure)
    ref.step(ref_closure)
    # no momentum buffer yet: no perturbation, exactly the base optimizer's step
    assert torch.equal(seen[0], q.w0)
    assert_all_equal(params, ref_params)
    v1 = _buffers(opt, params)
    torch.testing.assert_close(v1, q.grad(q.w0), rtol=0, atol=1e-12)
    w1 = flat(params).clone()

    opt.step(closure)
    at = w1 - RHO * v1 / v1.norm()  # a step of rho against the momentum's sign: theta - rho v/|v|
    torch.testing.assert_close(seen[1], at, rtol=0, atol=1e-12)
    v2 = MU * v1 + q.grad(at)
    torch.testing.assert_close(_buffers(opt, params), v2, rtol=0, atol=1e-11)
    torch.testing.assert_close(flat(params), w1 - LR * v2, rtol=0, atol=1e-12)
    assert not opt.perturbed
    # ... and it is not plain SGD's second step
    ref.step(ref_closure)
    assert (flat(params) - flat(ref_params)).abs().max() > 1e-3


def test_momentum_sam_restores_theta_exactly_and_by_hand_form_matches():
    q = Quadratic(seed=2)
    params, hand_params = q.params(), q.params()
    opt = MomentumSAM(torch.optim.SGD(params, lr=LR, momentum=MU), rho=RHO)
    hand = MomentumSAM(torch.optim.SGD(hand_params, lr=LR, momentum=MU), rho=RHO)

    def closure():
        opt.zero_grad()
        loss = q.loss(params)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
        hand.zero_grad()
        with hand.perturbed_forward():
            q.loss(hand_params).backward()
        hand.step()
    assert_all_equal(params, hand_params)
    # lr = 0: after the perturbed pass the weights are theta again, bit for bit
    before = flat(params).clone()
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step(closure)
    assert torch.equal(flat(params), before)


# ----------------------------------------------------------------------------------------------
# m-SAM


def _ls_closure(opt, ls, params, rows=slice(None), share=1.0, zero=True):
    def closure():
        if zero:
            opt.zero_grad()
        loss = ls.loss(params, rows) * share
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("normalize", [True, False])
def test_msam_with_one_microbatch_is_the_sam_step(normalize):
    ls = LeastSquares(seed=3)
    a, b = ls.params(), ls.params()
    opt_a = SAM(torch.optim.SGD(a, lr=LR, momentum=MU), rho=RHO, normalize=normalize)
    opt_b = SAM(torch.optim.SGD(b, lr=LR, momentum=MU), rho=RHO, normalize=normalize)
    for _ in range(2):
        opt_a.zero_grad()
        loss_a = opt_a.microbatch(_ls_closure(opt_a, ls, a, zero=False), last=True)
        opt_a.step()
        loss_b = opt_b.step(_ls_closure(opt_b, ls, b))
        assert torch.equal(loss_a, loss_b)
        assert_all_equal(a, b)


@pytest.mark.parametrize("normalize", [True, False])
def test_msam_two_microbatches_is_the_mean_of_own_perturbed_gradients(normalize):
    ls = LeastSquares(n=12, seed=4)
    params = ls.params()
    opt = SAM(torch.optim.SGD(params, lr=LR, momentum=0), rho=RHO, normalize=normalize)
    k, halves = 2, [slice(0, 6), slice(6, 12)]
    opt.zero_grad()
    for j, rows in enumerate(halves):
        closure = _ls_closure(opt, ls, params, rows, share=1 / k, zero=False)
        opt.microbatch(closure, last=j == k - 1, loss_scale=1 / k)
    opt.step()

    g_msam = torch.zeros_like(ls.w0)
    for rows in halves:
        g_j = ls.grad(ls.w0, rows)
        e_j = RHO * g_j / g_j.norm() if normalize else RHO * g_j
        g_msam += ls.grad(ls.w0 + e_j, rows) / k
    torch.testing.assert_close(flat(params), ls.w0 - LR * g_msam, rtol=0, atol=1e-12)

    # ... which is not SAM on the whole batch (one perturbation from the mean gradient)
    g = ls.grad(ls.w0)
    e = RHO * g / g.norm() if normalize else RHO * g
    assert (ls.grad(ls.w0 + e) - g_msam).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# BatchNorm statistics


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def batch(n: int = 16, d: int = 6, classes: int = 4, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) * 2 + 1).to(dtype)
    return x, torch.randint(0, classes, (n,), generator=g)


def _bn_stats(model: nn.Module) -> list[torch.Tensor]:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    return [t.clone() for m in bns for t in (m.running_mean, m.running_var, m.num_batches_tracked)]


def test_sam_updates_batchnorm_statistics_once_from_theta():
    x, y = batch(d=5, classes=3)
    model = bn_net()
    reference = copy.deepcopy(model)
    unfrozen = copy.deepcopy(model)
    with torch.no_grad():
        reference.train()(x)  # one forward at theta in train mode
    expected = _bn_stats(reference)
    assert expected[2].item() == 1

    def step(net, opt):
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss

        opt.step(closure)

    step(model, SAM(torch.optim.SGD(model.parameters(), lr=LR), rho=0.5, model=model))
    assert_all_equal(_bn_stats(model), expected)

    # Without ``model=`` the perturbed pass updates them a second time (from theta + e).
    step(unfrozen, SAM(torch.optim.SGD(unfrozen.parameters(), lr=LR), rho=0.5))
    stats = _bn_stats(unfrozen)
    assert stats[2].item() == 2
    assert (stats[0] - expected[0]).abs().max() > 1e-3


def test_momentum_sam_updates_batchnorm_statistics_once():
    x, y = batch(d=5, classes=3)
    model = bn_net()
    opt = MomentumSAM(torch.optim.SGD(model.parameters(), lr=LR, momentum=MU), rho=RHO)
    for _ in range(3):

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    assert _bn_stats(model)[2].item() == 3


# ----------------------------------------------------------------------------------------------
# The engine's update against the wrappers


def engine_parts(model, sharpness=None, momentum=MU, **kwargs) -> UpdateParts:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    return UpdateParts(model, opt, TransformChain([]), sharpness=sharpness, **kwargs)


def engine_steps(parts, micro_batches, n_updates=3, lr=LR):
    size = sum(len(y) for _, y in micro_batches)
    for t in range(n_updates):
        optimizer_update(parts, micro_batches, size, UpdateInfo(t, lr))


def split(x, y, k):
    return list(zip(x.chunk(k), y.chunk(k), strict=True))


def full_batch_closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 2])
def test_engine_sam_equals_the_sam_wrapper(normalize, k):
    """kind sam: one perturbation from the whole (rank's) batch, however it is cut."""
    x, y = batch()
    model, wrapped = mlp(), mlp()
    parts = engine_parts(model, Sharpness("sam", RHO, normalize))
    engine_steps(parts, split(x, y, k))
    opt = SAM(torch.optim.SGD(wrapped.parameters(), lr=LR, momentum=MU), RHO, normalize)
    for _ in range(3):
        opt.step(full_batch_closure(opt, wrapped, x, y))
    assert_all_close(params_of(model), params_of(wrapped), atol=1e-6)
    # not plain SGD
    plain = mlp()
    engine_steps(engine_parts(plain), split(x, y, k))
    assert max_diff(params_of(model), params_of(plain)) > 1e-4


@pytest.mark.parametrize("normalize", [True, False])
def test_engine_msam_equals_the_wrapper_microbatch_loop(normalize):
    x, y = batch()
    k = 4
    model, wrapped = mlp(), mlp()
    engine_steps(engine_parts(model, Sharpness("msam", RHO, normalize)), split(x, y, k))
    opt = SAM(torch.optim.SGD(wrapped.parameters(), lr=LR, momentum=MU), RHO, normalize)
    for _ in range(3):
        opt.zero_grad()
        for j, (xj, yj) in enumerate(split(x, y, k)):

            def closure(xj=xj, yj=yj):
                loss = F.cross_entropy(wrapped(xj), yj) / k
                loss.backward()
                return loss

            opt.microbatch(closure, last=j == k - 1, loss_scale=1 / k)
        opt.step()
    assert_all_close(params_of(model), params_of(wrapped), atol=1e-6)
    # and m-SAM is not SAM over the same micro-batches
    sam = mlp()
    engine_steps(engine_parts(sam, Sharpness("sam", RHO, normalize)), split(x, y, k))
    assert max_diff(params_of(model), params_of(sam)) > 1e-4


def test_engine_momentum_sam_equals_the_momentum_sam_wrapper():
    x, y = batch()
    model, wrapped = mlp(), mlp()
    engine_steps(engine_parts(model, Sharpness("momentum", RHO)), split(x, y, 2), n_updates=4)
    opt = MomentumSAM(torch.optim.SGD(wrapped.parameters(), lr=LR, momentum=MU), rho=RHO)
    for _ in range(4):
        opt.step(full_batch_closure(opt, wrapped, x, y))
    assert_all_close(params_of(model), params_of(wrapped), atol=1e-6)
    plain = mlp()
    engine_steps(engine_parts(plain), split(x, y, 2), n_updates=4)
    assert max_diff(params_of(model), params_of(plain)) > 1e-4


@pytest.mark.parametrize("kind", ["sam", "msam", "momentum"])
def test_engine_updates_batchnorm_statistics_once_per_microbatch_at_theta(kind):
    x, y = batch(d=5, classes=3)
    model = bn_net()
    reference = copy.deepcopy(model)
    micro = split(x, y, 2)
    with torch.no_grad():
        for xj, _ in micro:
            reference.train()(xj)
    parts = engine_parts(model, Sharpness(kind, 0.5), momentum=0.0 if kind != "momentum" else MU)
    # (momentum: no buffer at the first update, so its passes are at theta too)
    optimizer_update(parts, micro, 16, UpdateInfo(0, LR))
    stats, expected = _bn_stats(model), _bn_stats(reference)
    assert stats[2].item() == 2  # the two unperturbed passes, not four
    assert_all_close(stats, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The finite-difference penalty against the double backward


def _engine_grad(model, micro, **kwargs) -> torch.Tensor:
    model = copy.deepcopy(model)
    parts = engine_parts(model, momentum=0.0, **kwargs)
    optimizer_update(parts, micro, sum(len(y) for _, y in micro), UpdateInfo(0, 0.0))
    return flat([p.grad for p in model.parameters()])


def test_finite_difference_penalty_converges_to_the_double_backward_linearly():
    model = mlp(dtype=F64)
    x, y = batch(dtype=F64)
    micro = split(x, y, 2)
    plain = _engine_grad(model, micro)
    errors = []
    for lam in (1e-1, 1e-2, 1e-3):
        exact = _engine_grad(model, micro, grad_penalty=lam)
        fd = _engine_grad(model, micro, sharpness=Sharpness("msam", lam / 2, normalize=False))
        contribution = (exact - plain).norm()
        assert contribution > 1e-6 * lam  # the penalty does something
        errors.append(((fd - exact).norm() / contribution).item())
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(5 <= r <= 20 for r in ratios), (errors, ratios)  # O(lambda), not O(1) or O(lambda^2)
    assert errors[-1] < 1e-3, errors


def test_engine_loss_of_a_float64_model_is_computed_in_float64():
    """A float64 model's loss (and so its gradient) must not be rounded to float32."""
    model = mlp(dtype=F64)
    x, y = batch(dtype=F64)
    parts = engine_parts(copy.deepcopy(model), momentum=0.0)
    out = optimizer_update(parts, split(x, y, 2), 16, UpdateInfo(0, 0.0))
    expected = F.cross_entropy(model(x), y, reduction="sum")
    assert abs(out.loss_sum.item() - expected.item()) < 1e-12


# ----------------------------------------------------------------------------------------------
# State, arguments


def _run(opt, model, x, y, n=2):
    for _ in range(n):
        opt.step(full_batch_closure(opt, model, x, y))


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kind", ["sam", "sam_unnormalized", "momentum_sam"])
def test_state_dict_round_trip_continues_identically(kind):
    x, y = batch()

    def make(model, rho, normalize):
        base = torch.optim.SGD(model.parameters(), lr=LR, momentum=MU, weight_decay=1e-3)
        if kind == "momentum_sam":
            return MomentumSAM(base, rho=rho)
        return SAM(base, rho=rho, normalize=normalize)

    model = mlp()
    normalize = kind == "sam"
    opt = make(model, 0.2, normalize)
    _run(opt, model, x, y)
    state = opt.state_dict()
    base_state = opt.base.state_dict()
    mine = state["sharpness"]
    assert mine["kind"] == ("momentum_sam" if kind == "momentum_sam" else "sam")
    assert mine["rho"] == 0.2
    if kind != "momentum_sam":
        assert mine["normalize"] is normalize
    assert state["param_groups"] == base_state["param_groups"]
    assert state["state"].keys() == base_state["state"].keys() and len(state["state"]) == 4
    for i, s in base_state["state"].items():
        assert torch.equal(state["state"][i]["momentum_buffer"], s["momentum_buffer"])

    # A fresh wrapper built with other settings takes the saved ones, and continues identically.
    fresh_model = copy.deepcopy(model)
    fresh = make(fresh_model, 0.05, not normalize)
    fresh.load_state_dict(_roundtrip(state))
    assert fresh.rho == 0.2
    if kind != "momentum_sam":
        assert fresh.normalize is normalize
    _run(opt, model, x, y)
    _run(fresh, fresh_model, x, y)
    assert_all_equal(params_of(model), params_of(fresh_model))


def test_state_of_one_kind_is_refused_by_the_other():
    model = mlp()
    x, y = batch()
    momentum = MomentumSAM(torch.optim.SGD(model.parameters(), lr=LR, momentum=MU))
    _run(momentum, model, x, y, n=1)
    sam = SAM(torch.optim.SGD(model.parameters(), lr=LR, momentum=MU))
    with pytest.raises(ValueError, match="momentum_sam"):
        sam.load_state_dict(momentum.state_dict())
    with pytest.raises(ValueError, match="sam"):
        MomentumSAM(torch.optim.SGD(model.parameters(), lr=LR, momentum=MU)).load_state_dict(
            sam.state_dict()
        )
    # a plain optimizer's state (no "sharpness" entry) loads: the base's own
    sam.load_state_dict(momentum.base.state_dict())
    assert len(sam.state) == 4


@pytest.mark.parametrize("cls", [SAM, MomentumSAM])
@pytest.mark.parametrize("rho", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_constructor_refuses_a_bad_rho(cls, rho):
    w = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="rho"):
        cls(torch.optim.SGD([w], lr=LR, momentum=MU), rho=rho)


@pytest.mark.parametrize("cls", [SAM, MomentumSAM])
def test_constructor_refuses_a_non_optimizer_base(cls):
    model = nn.Linear(2, 2)
    for base in (model, list(model.parameters()), None):
        with pytest.raises(TypeError, match="torch.optim.Optimizer"):
            cls(base)


# ----------------------------------------------------------------------------------------------
# Label smoothing


def test_engine_label_smoothing_is_the_smoothed_cross_entropy_mean():
    eps = 0.1
    model = mlp(dtype=F64)
    x, y = batch(dtype=F64)
    engine_model = copy.deepcopy(model)
    parts = engine_parts(
        engine_model, momentum=0.0, loss=training_loss(TrainConfig(label_smoothing=eps))
    )
    out = optimizer_update(parts, split(x, y, 2), 16, UpdateInfo(0, 0.0))
    got = [p.grad for p in engine_model.parameters()]

    # A hand loop: (1 - eps) (-log p_y) + eps mean_c (-log p_c), example by example.
    hand = copy.deepcopy(model)
    total = torch.zeros((), dtype=F64)
    for i in range(len(y)):
        logp = torch.log_softmax(hand(x[i : i + 1])[0], dim=0)
        total = total + (1 - eps) * -logp[y[i]] + eps * -logp.mean()
    (total / len(y)).backward()
    assert_all_close(got, [p.grad for p in hand.parameters()], atol=1e-12)
    assert abs(out.loss_sum.item() - total.item()) < 1e-10  # the smoothed objective's sum

    torch_form = copy.deepcopy(model)
    F.cross_entropy(torch_form(x), y, label_smoothing=eps).backward()
    assert_all_close(got, [p.grad for p in torch_form.parameters()], atol=1e-12)
    plain = copy.deepcopy(model)
    F.cross_entropy(plain(x), y).backward()
    assert max_diff(got, [p.grad for p in plain.parameters()]) > 1e-4


# ----------------------------------------------------------------------------------------------
# Lightning, GradScaler


@pytest.mark.parametrize("kind", ["sam", "momentum_sam"])
def test_lightning_automatic_optimization_equals_the_plain_loop(tmp_path, kind):
    L = pytest.importorskip(
        "lightning", reason="lightning is not installed (pip install -e .[test])"
    )
    x, y = batch(n=24)
    batches = list(zip(x.split(8), y.split(8), strict=True))

    def make(net):
        base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MU)
        if kind == "sam":
            return SAM(base, rho=RHO, model=net)
        return MomentumSAM(base, rho=RHO, model=net)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return make(self)

    module = Module()
    loop_net = mlp()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)

    opt = make(loop_net)
    for xb, yb in batches:
        opt.step(full_batch_closure(opt, loop_net, xb, yb))
    assert_all_close(params_of(module.net), params_of(loop_net), atol=1e-7)
    plain = mlp()
    sgd = torch.optim.SGD(plain.parameters(), lr=LR, momentum=MU)
    for xb, yb in batches:
        sgd.step(full_batch_closure(sgd, plain, xb, yb))
    assert max_diff(params_of(loop_net), params_of(plain)) > 1e-4


def _cpu_scaler():
    try:
        return torch.amp.GradScaler("cpu", init_scale=2.0**12)
    except (AttributeError, TypeError, RuntimeError) as e:  # torch < 2.3
        pytest.skip(f"no CPU GradScaler in this torch: {e}")


@pytest.mark.parametrize("normalize", [True, False])
def test_grad_scaler_by_hand_form_equals_the_unscaled_step(normalize):
    x, y = batch()
    model, reference = mlp(), mlp()
    scaler = _cpu_scaler()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=LR, momentum=MU), RHO, normalize)
    ref = SAM(torch.optim.SGD(reference.parameters(), lr=LR, momentum=MU), RHO, normalize)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        opt.first_step(loss_scale=1.0 if normalize else scaler.get_scale())
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        opt.restore()
        scaler.step(opt)
        scaler.update()
        ref.step(full_batch_closure(ref, reference, x, y))
    assert scaler.get_scale() == 2.0**12  # no step skipped
    assert_all_close(params_of(model), params_of(reference), atol=1e-6)


def test_grad_scaler_skipped_step_leaves_the_weights_at_theta():
    x, y = batch()
    model = mlp()
    theta = params_of(model)
    scaler = _cpu_scaler()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=LR, momentum=MU), RHO)

    def perturbed_pass_with_inf():
        opt.zero_grad()
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        opt.first_step()
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        with torch.no_grad():
            next(model.parameters()).grad[0, 0] = float("inf")

    perturbed_pass_with_inf()
    opt.restore()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**11  # the step was skipped
    assert_all_equal(params_of(model), theta)
    assert not opt.perturbed and len(opt.state) == 0  # the base optimizer never stepped

    # Why the restore is there: a skipped step alone leaves the weights at theta + e.
    perturbed_pass_with_inf()
    scaler.step(opt)
    assert opt.perturbed
    assert max_diff(params_of(model), theta) > 1e-4
    opt.restore()
    assert_all_equal(params_of(model), theta)
