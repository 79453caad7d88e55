"""The noise kinds against closed forms on linear least squares (statistical tests at 5 sigma).

Model: ``l_i = (x_i . w - y_i)^2 / 2`` with ``x_i ~ N(0, I)``, ``y_i = x_i . w* + s eps_i``, so the
per-example gradient is ``g_i = (x_i . w - y_i) x_i`` and, with ``delta = w - w*``, its covariance
is ``Sigma = (|delta|^2 + s^2) I + delta delta^T`` (Isserlis).
"""

from __future__ import annotations

import copy
import doctest
import math
import threading

import pytest
import torch

from largebatch.gradient import diagonal_noise, microbatch_noise, multiplicative_noise
from largebatch.gradient.base import UpdateInfo
from largebatch.gradient.diagonal_noise import DiagonalNoise
from largebatch.gradient.microbatch_noise import MicrobatchNoise
from largebatch.gradient.multiplicative_noise import MultiplicativeNoise

D, M, K, C, SEED = 3, 8, 4, 0.05, 7
INFO = UpdateInfo(step=0, lr=0.1)
F64 = torch.float64


def param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(D, dtype=F64))


def per_example_grads(n: int, gen: torch.Generator, delta=(0.5, -1.0, 0.25), s=0.7):
    """``(n, D)`` per-example gradients at ``w - w* = delta``, and ``diag(Sigma)``."""
    x = torch.randn(n, D, generator=gen, dtype=F64)
    d = torch.tensor(delta, dtype=F64)
    residual = x @ d - s * torch.randn(n, generator=gen, dtype=F64)
    return residual[:, None] * x, (d @ d + s * s) + d * d


def group_means(n_groups: int, gen: torch.Generator) -> torch.Tensor:
    """``(n_groups, D)`` micro-batch mean gradients of ``M`` examples each."""
    g, _ = per_example_grads(n_groups * M, gen)
    return g.view(n_groups, M, D).mean(1)


def drive(kind, sums: list[torch.Tensor], final: torch.Tensor) -> torch.Tensor:
    """One update as the engine runs it: the hooks get ``p.grad`` after each micro-batch."""
    kind.begin_update(len(sums), INFO)
    for j, s in enumerate(sums):
        kind.after_microbatch(j, [s.clone()])
    out = final.clone()
    kind.apply_([out], INFO)
    return out


def single_process(g: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Running sums ``S_j / k`` after each of the ``k`` micro-batches ``g`` and the final mean."""
    k = len(g)
    sums = list(torch.cumsum(g, 0) / k)
    return sums, sums[-1]


def rank_inputs(g: torch.Tensor, last: str) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """``g``: ``(W, k, D)``. Per rank, ``p.grad`` after each micro-batch (DDP convention)."""
    w, k = g.shape[:2]
    local = torch.cumsum(g, 1) / k  # (W, k, D)
    mean = local[:, -1].sum(0) / w
    sums = [list(local[r]) if last == "local" else [*local[r, :-1], mean] for r in range(w)]
    return sums, mean


def run_ranks(make, inputs, final):
    """Run one update on ``len(inputs)`` simulated ranks in threads with a summing all-reduce."""
    world = len(inputs)
    barrier, slots = threading.Barrier(world, timeout=60), [None] * world
    outs, errors = [None] * world, []

    def reducer(rank):
        def all_reduce(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0].clone()
            for other in slots[1:]:
                total += other
            barrier.wait()
            return t.copy_(total)

        return all_reduce

    def body(rank):
        try:
            kind = make(rank, reducer(rank))
            outs[rank] = (kind, drive(kind, inputs[rank], final))
        except Exception as e:  # surfaced below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return outs


def assert_within(sample: torch.Tensor, target: torch.Tensor, sigmas: float = 5.0):
    """Every entry of ``sample.mean(0)`` is within ``sigmas`` standard errors of ``target``."""
    se = sample.std(0) / math.sqrt(len(sample))
    z = (sample.mean(0) - target).abs() / se
    assert (z < sigmas).all(), f"z-scores {z}"


# --- (a), (b): MicrobatchNoise ------------------------------------------------------------------


def test_microbatch_noise_covariance_is_c_sigma_hat():
    g = group_means(K, torch.Generator().manual_seed(0))
    sums, mean = single_process(g)
    kind = MicrobatchNoise([param()], C, M, seed=SEED)
    noise = torch.stack([drive(kind, sums, mean) - mean for _ in range(4000)])  # (N, D)
    dev = g - mean
    target = C * M / (K - 1) * dev.T @ dev  # E[n n^T] exactly, given the data
    outer = (noise[:, :, None] * noise[:, None, :]).reshape(len(noise), -1)
    assert_within(outer, target.reshape(-1))
    assert_within(noise, torch.zeros(D))


def test_microbatch_one_buffer_equals_direct_formula():
    g = group_means(K, torch.Generator().manual_seed(1))
    sums, mean = single_process(g)
    out = drive(MicrobatchNoise([param()], C, M, seed=SEED), sums, mean)
    xi = torch.randn(K, generator=torch.Generator().manual_seed(SEED), dtype=F64)
    direct = math.sqrt(C * M / (K - 1)) * (xi[:, None] * (g - mean)).sum(0)
    torch.testing.assert_close(out - mean, direct, rtol=0, atol=1e-12)


def test_microbatch_in_a_real_backward_loop_matches_closed_form():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(K * M, D, generator=gen, dtype=F64), torch.randn(K * M, generator=gen)
    model = torch.nn.Linear(D, 1).double()
    kind = MicrobatchNoise(model.parameters(), C, M, seed=SEED)
    kind.begin_update(K, INFO)
    for j in range(K):
        xj, yj = x[j * M : (j + 1) * M], y[j * M : (j + 1) * M].double()
        ((model(xj).squeeze(1) - yj).pow(2).mean() / 2 / K).backward()
        kind.after_microbatch(j, [p.grad for p in model.parameters()])
    before = [p.grad.clone() for p in model.parameters()]
    kind.apply_([p.grad for p in model.parameters()], INFO)
    with torch.no_grad():
        r = model(x).squeeze(1) - y.double()
    per_example = torch.cat([r[:, None] * x, r[:, None]], 1)  # (B, D + 1): weight, bias
    g = per_example.view(K, M, D + 1).mean(1)
    xi = torch.randn(K, generator=torch.Generator().manual_seed(SEED), dtype=F64)
    direct = math.sqrt(C * M / (K - 1)) * (xi[:, None] * (g - g.mean(0))).sum(0)
    pairs = zip(model.parameters(), before, strict=True)
    got = torch.cat([(p.grad - b).reshape(-1) for p, b in pairs])
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-10)


# --- (c): DiagonalNoise -------------------------------------------------------------------------


def test_diagonal_estimate_is_unbiased_over_data():
    gen = torch.Generator().manual_seed(3)
    kind = DiagonalNoise([param()], C, M, decay=0.0, seed=SEED)
    estimates = []
    for _ in range(3000):
        g_i, diag_sigma = per_example_grads(K * M, gen)
        sums, mean = single_process(g_i.view(K, M, D).mean(1))
        drive(kind, sums, mean)
        estimates.append(kind.variance_estimate())
    assert_within(torch.stack(estimates), diag_sigma)


def test_diagonal_estimate_formula_and_bias_corrected_average():
    gen = torch.Generator().manual_seed(4)
    kind = DiagonalNoise([param()], C, M, decay=0.9, seed=SEED)
    direct = []
    for _ in range(2):
        g = group_means(K, gen)
        sums, mean = single_process(g)
        drive(kind, sums, mean)
        direct.append(M / (K - 1) * (g - mean).pow(2).sum(0))
    expected = (0.9 * 0.1 * direct[0] + 0.1 * direct[1]) / (1 - 0.9**2)
    torch.testing.assert_close(kind.variance_estimate(), expected, rtol=1e-10, atol=0)


def test_diagonal_injected_variance_is_c_times_estimate():
    g = group_means(K, torch.Generator().manual_seed(5))
    sums, mean = single_process(g)
    kind = DiagonalNoise([param()], C, M, decay=0.0, seed=SEED)
    noise = torch.stack([drive(kind, sums, mean) - mean for _ in range(4000)])
    target = C * M / (K - 1) * (g - mean).pow(2).sum(0)
    assert_within(noise.pow(2), target)
    torch.testing.assert_close(kind.injected_variance(), target.mean())


# --- (d): MultiplicativeNoise -------------------------------------------------------------------


@pytest.mark.parametrize("center", [True, False])
def test_multiplicative_added_covariance_matches_derivation(center):
    b = 16
    g_i, _ = per_example_grads(b, torch.Generator().manual_seed(6))
    kind = MultiplicativeNoise(C, b, seed=SEED, center=center)
    draws = []
    for _ in range(4000):
        kind.begin_update(1, INFO)
        w = kind.loss_weights(b, torch.device("cpu"), INFO).double()
        draws.append((w - 1) @ g_i / b)  # the weighted gradient minus the plain one
    e = torch.stack(draws)
    if center:
        dev = g_i - g_i.mean(0)
        target = C / (b - 1) * dev.T @ dev  # c * Sigma_hat: no mean term
    else:
        target = C / b * g_i.T @ g_i  # c * (Sigma_hat + mean mean^T), Wu et al.
    outer = (e[:, :, None] * e[:, None, :]).reshape(len(e), -1)
    assert_within(outer, target.reshape(-1))


def test_multiplicative_weights_enter_the_engines_loss_as_derived():
    b, k = 16, 2
    gen = torch.Generator().manual_seed(8)
    x, y = torch.randn(b, D, generator=gen, dtype=F64), torch.randn(b, generator=gen, dtype=F64)
    w_param = param()
    kind = MultiplicativeNoise(C, b, seed=SEED)
    kind.begin_update(k, INFO)
    weights = []
    for xj, yj in zip(x.chunk(k), y.chunk(k), strict=True):
        wj = kind.loss_weights(len(xj), xj.device, INFO).double()
        weights.append(wj)
        ((wj * (xj @ w_param - yj).pow(2) / 2).sum() / b).backward()  # (W/B) sum_i w_i l_i
    w = torch.cat(weights)
    g_i = ((x @ w_param.detach() - y)[:, None]) * x
    torch.testing.assert_close(w_param.grad, (w[:, None] * g_i).mean(0), rtol=0, atol=1e-12)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)  # centered: the weights sum to B
    with pytest.raises(ValueError, match="share"):
        kind.loss_weights(1, x.device, INFO)


def test_multiplicative_ranks_take_slices_of_one_global_draw():
    b = 12
    whole = MultiplicativeNoise(C, b, seed=SEED)
    whole.begin_update(1, INFO)
    expected = whole.loss_weights(b, torch.device("cpu"), INFO)
    parts = []
    for rank in range(2):
        kind = MultiplicativeNoise(C, b, seed=SEED, world_size=2, rank=rank)
        kind.begin_update(2, INFO)
        parts += [kind.loss_weights(3, torch.device("cpu"), INFO) for _ in range(2)]
    assert torch.equal(torch.cat(parts), expected)


# --- (e), (f): state and c = 0 ------------------------------------------------------------------


def make_kind(kind: str, c: float = C, seed: int = SEED):
    if kind == "microbatch":
        return MicrobatchNoise([param()], c, M, seed=seed)
    if kind == "diagonal":
        return DiagonalNoise([param()], c, M, seed=seed)
    return MultiplicativeNoise(c, K * M, seed=seed)


def one_update(kind, gen: torch.Generator) -> torch.Tensor:
    if isinstance(kind, MultiplicativeNoise):
        kind.begin_update(K, INFO)
        w = [kind.loss_weights(M, torch.device("cpu"), INFO) for _ in range(K)]
        return torch.zeros(0) if w[0] is None else torch.cat(w)
    sums, mean = single_process(group_means(K, gen))
    return drive(kind, sums, mean)


@pytest.mark.parametrize("name", ["microbatch", "diagonal", "multiplicative"])
def test_state_dict_round_trip_continues_identically(name):
    gen = torch.Generator().manual_seed(9)
    kind = make_kind(name)
    for _ in range(3):
        one_update(kind, gen)
    state, gen_state = copy.deepcopy(kind.state_dict()), gen.get_state()
    expected = [one_update(kind, gen) for _ in range(2)]
    resumed = make_kind(name, seed=SEED + 1)
    resumed.load_state_dict(state)
    gen.set_state(gen_state)
    got = [one_update(resumed, gen) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert resumed.t == kind.t == 5


@pytest.mark.parametrize("name", ["microbatch", "diagonal", "multiplicative"])
def test_same_seed_same_noise(name):
    a = one_update(make_kind(name), torch.Generator().manual_seed(10))
    b = one_update(make_kind(name), torch.Generator().manual_seed(10))
    c = one_update(make_kind(name, seed=SEED + 1), torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["microbatch", "diagonal"])
def test_zero_multiplier_leaves_gradients_bit_identical(name):
    g = group_means(K, torch.Generator().manual_seed(11))
    sums, mean = single_process(g)
    assert torch.equal(drive(make_kind(name, c=0.0), sums, mean), mean)


def test_zero_multiplier_gives_no_loss_weights():
    kind = make_kind("multiplicative", c=0.0)
    kind.begin_update(K, INFO)
    assert kind.loss_weights(M, torch.device("cpu"), INFO) is None


@pytest.mark.parametrize("cls", [MicrobatchNoise, DiagonalNoise])
def test_one_microbatch_is_a_config_error(cls):
    kind = cls([param()], C, M)
    with pytest.raises(ValueError, match="train.micro_batch_size"):
        kind.begin_update(1, INFO)
    ddp = cls([param()], C, M, world_size=2, all_reduce=lambda t: t)
    with pytest.raises(ValueError, match="train.micro_batch_size"):
        ddp.begin_update(1, INFO)  # "reduced": one micro-batch per rank is seen only summed
    assert torch.equal(drive(cls([param()], 0.0, M), [torch.ones(D)], torch.ones(D)), torch.ones(D))


# --- (g): two simulated ranks -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MicrobatchNoise, DiagonalNoise])
@pytest.mark.parametrize("k", [1, 3])
def test_two_ranks_local_equal_each_other_and_single_process(cls, k):
    g = group_means(2 * k, torch.Generator().manual_seed(12))  # rank r, micro-batch j: r k + j
    inputs, mean = rank_inputs(g.view(2, k, D), "local")
    outs = run_ranks(
        lambda r, ar: cls(
            [param()], C, M, seed=SEED, world_size=2, rank=r, all_reduce=ar, last_microbatch="local"
        ),
        inputs,
        mean,
    )
    assert torch.equal(outs[0][1], outs[1][1])
    sums, single_mean = single_process(g)
    single = drive(cls([param()], C, M, seed=SEED), sums, single_mean)
    torch.testing.assert_close(outs[0][1], single, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [MicrobatchNoise, DiagonalNoise])
def test_two_ranks_reduced_equal_each_other_and_the_merged_groups_formula(cls):
    w, k = 2, 3
    g = group_means(w * k, torch.Generator().manual_seed(13)).view(w, k, D)
    inputs, mean = rank_inputs(g, "reduced")
    outs = run_ranks(
        lambda r, ar: cls([param()], C, M, seed=SEED, world_size=w, rank=r, all_reduce=ar),
        inputs,
        mean,
    )
    assert torch.equal(outs[0][1], outs[1][1])
    # groups: every rank's first k-1 micro-batches (m each), then the ranks' last ones merged (W m)
    groups = torch.cat([g[:, :-1].reshape(-1, D), g[:, -1].mean(0, keepdim=True)])
    sizes = torch.tensor([M] * (w * (k - 1)) + [w * M], dtype=F64)[:, None]
    n = len(groups)
    if cls is DiagonalNoise:
        estimate = (sizes * (groups - mean).pow(2)).sum(0) / (n - 1)
        torch.testing.assert_close(outs[0][0].variance_estimate(), estimate, rtol=1e-10, atol=0)
    else:
        z = torch.randn(n, generator=torch.Generator().manual_seed(SEED), dtype=F64)[:, None]
        direct = math.sqrt(C / (n - 1)) * (z * sizes.sqrt() * (groups - mean)).sum(0)
        torch.testing.assert_close(outs[0][1] - mean, direct, rtol=0, atol=1e-12)


def test_docstring_examples_run():
    for module in (microbatch_noise, diagonal_noise, multiplicative_noise):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_merged_groups_estimator_is_unbiased():
    # The "reduced" DDP groups have unequal sizes (m, ..., m, W m); the weighted estimator the
    # kinds use, sum_j m_j (g_j - g)^2 / (n - 1), is still unbiased for diag(Sigma).
    gen, w, k = torch.Generator().manual_seed(14), 2, 3
    estimates = []
    for _ in range(3000):
        g_i, diag_sigma = per_example_grads(w * k * M, gen)
        g = g_i.view(w, k, M, D).mean(2)
        groups = torch.cat([g[:, :-1].reshape(-1, D), g[:, -1].mean(0, keepdim=True)])
        sizes = torch.tensor([M] * (w * (k - 1)) + [w * M], dtype=F64)[:, None]
        mean = g.mean((0, 1))
        estimates.append((sizes * (groups - mean).pow(2)).sum(0) / (len(groups) - 1))
    assert_within(torch.stack(estimates), diag_sigma)
