"""The attached transforms' state survives a checkpoint whatever the order of ``attach`` and
``optimizer.load_state_dict``, through ``torch.distributed.checkpoint``, and the update-placement
noise moves each parameter group by its own learning rate.

Every resume test compares against an uninterrupted run of the same length: the weights (and the
noise state) must be bit-identical, i.e. the resumed run drew exactly the same noise.
"""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from largebatch.gradient.attach import STATE_KEY, attach
from largebatch.gradient.base import GradientTransform, TransformChain, UpdateInfo
from largebatch.gradient.diagonal_noise import DiagonalNoise
from largebatch.gradient.microbatch_noise import MicrobatchNoise
from largebatch.gradient.multiplicative_noise import MultiplicativeNoise
from largebatch.gradient.noise import GradientNoise

dcp = pytest.importorskip("torch.distributed.checkpoint")
dsd = pytest.importorskip("torch.distributed.checkpoint.state_dict")
Stateful = pytest.importorskip("torch.distributed.checkpoint.stateful").Stateful

# DCP in one process without init_process_group says so once per call: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

LR = 0.1
ALPHA = 1e-2  # large enough that the noise moves the weights visibly


class StepProbe(GradientTransform):
    """Records ``UpdateInfo.step`` (the handle's update count, which must resume too)."""

    name = "probe"

    def __init__(self, params):
        self.params = list(params)
        self.steps: list[int] = []

    def apply_(self, grads, info):
        self.steps.append(info.step)


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)


def build(seed=0, momentum=0.9, noise_seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    noise = GradientNoise(model.parameters(), alpha=ALPHA, gamma=0.55, seed=noise_seed)
    probe = StepProbe(model.parameters())
    return model, opt, noise, probe


def train(model, opt, first, last):
    for s in range(first, last):
        x, y = batch(s)
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_equal(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def straight(steps, momentum=0.9):
    model, opt, noise, probe = build(momentum=momentum)
    handle = attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, steps)
    return model, noise, handle


# -- 1. attach and load_state_dict in either order ------------------------------------------------


@pytest.mark.parametrize("order", ["attach_then_load", "load_then_attach"])
def test_resume_is_exact_in_either_order(order):
    model, opt, noise, probe = build()
    attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, 3)
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})

    # a fresh process: other weights, another noise seed; the checkpoint must decide everything
    model2, opt2, noise2, probe2 = build(seed=7, noise_seed=99)
    model2.load_state_dict(ckpt["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the exact paths warn about nothing
        if order == "attach_then_load":
            handle2 = attach(TransformChain([noise2, probe2]), opt2)
            opt2.load_state_dict(ckpt["opt"])
        else:  # the HF Trainer's order: the optimizer is loaded before a callback can attach
            opt2.load_state_dict(ckpt["opt"])
            handle2 = attach(TransformChain([noise2, probe2]), opt2)
    assert noise2.t == 3 and handle2.step == 3
    train(model2, opt2, 3, 6)

    ref_model, ref_noise, ref_handle = straight(6)
    assert_equal(weights(model2), weights(ref_model))
    assert noise2.t == ref_noise.t == 6 and handle2.step == ref_handle.step == 6
    assert probe2.steps == [3, 4, 5]
    assert torch.equal(noise2.generator.get_state(), ref_noise.generator.get_state())
    # the claimed entry left the optimizer's parameter group; a new save carries it again
    assert STATE_KEY not in opt2.param_groups[0]
    assert opt2.state_dict()[STATE_KEY]["noise+probe"]["step"] == 6


def test_an_unattached_optimizer_keeps_the_entry_through_its_own_checkpoints():
    """Load, save again without ever attaching, load that, attach: still exact."""
    model, opt, noise, probe = build()
    attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, 3)
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})

    bystander = torch.optim.SGD(build(seed=3)[0].parameters(), lr=LR, momentum=0.9)
    bystander.load_state_dict(ckpt["opt"])
    again = roundtrip(bystander.state_dict())

    model2, opt2, noise2, probe2 = build(seed=7, noise_seed=99)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(again)
    attach(TransformChain([noise2, probe2]), opt2)
    train(model2, opt2, 3, 6)
    assert_equal(weights(model2), weights(straight(6)[0]))


def test_a_checkpoint_without_the_group_entry_loaded_before_attach_warns_with_the_fix():
    """A checkpoint that has the entry only at the top level (written before the entry was also
    kept in the parameter group) loses it in a load before attach: attach says what to do, and
    doing it (loading again after attach) resumes exactly."""
    model, opt, noise, probe = build()
    attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, 3)
    sd = opt.state_dict()
    sd["param_groups"] = [
        {k: v for k, v in g.items() if k != STATE_KEY} for g in sd["param_groups"]
    ]
    ckpt = roundtrip({"model": model.state_dict(), "opt": sd})

    model2, opt2, noise2, probe2 = build(seed=7, noise_seed=99)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    with pytest.warns(UserWarning, match="load the checkpoint again after attach") as record:
        attach(TransformChain([noise2, probe2]), opt2)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert noise2.t == 0
    opt2.load_state_dict(ckpt["opt"])  # the fix the warning names
    train(model2, opt2, 3, 6)
    assert_equal(weights(model2), weights(straight(6)[0]))


def test_reattaching_to_a_stepped_optimizer_does_not_warn():
    model, opt, noise, probe = build()
    handle = attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, 2)
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach(TransformChain([noise, probe]), opt)


# -- 2. torch.distributed.checkpoint ------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_dcp_get_optimizer_state_dict_neither_steps_nor_strips_the_noise(momentum):
    """get_optimizer_state_dict initialises an empty optimizer state with a zero-lr, zero-grad
    step (always, for plain SGD): that is not an update, so the noise must not advance."""
    model, opt, noise, probe = build(momentum=momentum)
    handle = attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, 2)
    before = noise.generator.get_state()
    osd = dsd.get_optimizer_state_dict(model, opt)
    assert noise.t == 2 and handle.step == 2 and probe.steps == [0, 1]
    assert torch.equal(noise.generator.get_state(), before)
    entry = osd["param_groups"][0][STATE_KEY]["noise+probe"]
    assert entry["step"] == 2 and entry["transforms"]["noise"]["t"] == 2


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_dcp_save_and_load_through_the_state_dict_helpers_resumes_exactly(tmp_path, momentum):
    model, opt, noise, probe = build(momentum=momentum)
    attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, 3)
    dcp.save(
        {
            "model": dsd.get_model_state_dict(model),
            "optimizer": dsd.get_optimizer_state_dict(model, opt),
        },
        checkpoint_id=tmp_path,
    )

    model2, opt2, noise2, probe2 = build(seed=7, momentum=momentum, noise_seed=99)
    handle2 = attach(TransformChain([noise2, probe2]), opt2)
    state = {
        "model": dsd.get_model_state_dict(model2),
        "optimizer": dsd.get_optimizer_state_dict(model2, opt2),
    }
    dcp.load(state, checkpoint_id=tmp_path)
    dsd.set_model_state_dict(model2, state["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dsd.set_optimizer_state_dict(model2, opt2, state["optimizer"])
    assert noise2.t == 3 and handle2.step == 3
    train(model2, opt2, 3, 6)
    assert_equal(weights(model2), weights(straight(6, momentum=momentum)[0]))
    assert probe2.steps == [3, 4, 5]


def test_dcp_with_the_handle_as_stateful_resumes_exactly_even_with_flattened_state(tmp_path):
    """Flattened optimizer state dicts keep only the live parameter-group keys, so the entry is
    lost there; the handle (a ``Stateful``) saved next to the optimizer carries the state."""
    flat = dsd.StateDictOptions(flatten_optimizer_state_dict=True)
    model, opt, noise, probe = build()
    handle = attach(TransformChain([noise, probe]), opt)
    assert isinstance(handle, Stateful) and isinstance(noise, Stateful)
    train(model, opt, 0, 3)
    dcp.save(
        {
            "model": dsd.get_model_state_dict(model),
            "optimizer": dsd.get_optimizer_state_dict(model, opt, options=flat),
            "noise": handle,
        },
        checkpoint_id=tmp_path,
    )

    model2, opt2, noise2, probe2 = build(seed=7, noise_seed=99)
    handle2 = attach(TransformChain([noise2, probe2]), opt2)
    state = {
        "model": dsd.get_model_state_dict(model2),
        "optimizer": dsd.get_optimizer_state_dict(model2, opt2, options=flat),
        "noise": handle2,
    }
    dcp.load(state, checkpoint_id=tmp_path)
    dsd.set_model_state_dict(model2, state["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # restored through the handle: no warning
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dsd.set_optimizer_state_dict(model2, opt2, state["optimizer"], options=flat)
    assert noise2.t == 3 and handle2.step == 3
    train(model2, opt2, 3, 6)
    assert_equal(weights(model2), weights(straight(6)[0]))


def test_dcp_loaded_before_attach_warns_once_and_its_fix_resumes_exactly(tmp_path):
    """dcp.load fills only the keys of the state dict it is given: an optimizer loaded through
    DCP before attach has no entry to claim. attach says so in one line, naming the DCP fix; doing
    it (attach, build the state dict again, dcp.load, set_optimizer_state_dict) is exact."""
    model, opt, noise, probe = build()
    attach(TransformChain([noise, probe]), opt)
    train(model, opt, 0, 3)
    dcp.save(
        {
            "model": dsd.get_model_state_dict(model),
            "optimizer": dsd.get_optimizer_state_dict(model, opt),
        },
        checkpoint_id=tmp_path,
    )

    def load_into(model2, opt2):
        state = {
            "model": dsd.get_model_state_dict(model2),
            "optimizer": dsd.get_optimizer_state_dict(model2, opt2),
        }
        dcp.load(state, checkpoint_id=tmp_path)
        dsd.set_model_state_dict(model2, state["model"])
        dsd.set_optimizer_state_dict(model2, opt2, state["optimizer"])

    model2, opt2, noise2, probe2 = build(seed=7, noise_seed=99)
    load_into(model2, opt2)  # load, then attach
    with pytest.warns(UserWarning, match="set_optimizer_state_dict") as record:
        handle2 = attach(TransformChain([noise2, probe2]), opt2)
    ours = [r for r in record if str(r.message).startswith("attach:")]
    assert len(ours) == 1 and "\n" not in str(ours[0].message)
    assert noise2.t == 0 and handle2.step == 0
    load_into(model2, opt2)  # the fix the warning names
    assert noise2.t == 3 and handle2.step == 3
    train(model2, opt2, 3, 6)
    assert_equal(weights(model2), weights(straight(6)[0]))
    assert probe2.steps == [3, 4, 5]


# -- 3. placement="update" with parameter groups of different learning rates ----------------------


def test_update_placement_moves_each_group_by_its_own_learning_rate():
    """``w -= lr_g sigma_t n_t``: with zero gradients and plain SGD the step leaves the weights
    as they are, so what moved them is the noise alone; its draws are replayed from the seed."""
    lrs = (0.1, 0.01)
    a = torch.nn.Parameter(torch.zeros(20000))
    b = torch.nn.Parameter(torch.zeros(20000))
    opt = torch.optim.SGD([{"params": [a], "lr": lrs[0]}, {"params": [b], "lr": lrs[1]}])
    noise = GradientNoise([a, b], alpha=ALPHA, gamma=0.55, seed=5, placement="update")
    noise.attach(opt)
    replay = torch.Generator().manual_seed(5)
    for t in range(3):
        w0 = [a.detach().clone(), b.detach().clone()]
        a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
        opt.step()
        n = torch.empty(a.numel() + b.numel()).normal_(generator=replay)
        std = math.sqrt(ALPHA / (1 + t) ** 0.55)
        expected = [w0[0].add(n[: a.numel()], alpha=-lrs[0] * std)]
        expected.append(w0[1].add(n[a.numel() :], alpha=-lrs[1] * std))
        assert_equal([a.detach(), b.detach()], expected)
        # and the variance the docstring promises per group: lr_g^2 alpha / (1 + t)^gamma
        for w, before, lr in zip((a, b), w0, lrs, strict=True):
            var = (w.detach() - before).var().item()
            assert var == pytest.approx(lr**2 * ALPHA / (1 + t) ** 0.55, rel=0.05)
    assert noise.t == 3


def test_update_info_lr_of_falls_back_to_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    assert UpdateInfo(step=0, lr=0.3).lr_of(p) == 0.3
    assert UpdateInfo(step=0, lr=0.3, param_lrs={id(p): 0.03}).lr_of(p) == 0.03


# -- 4. the shaped kinds: refused by attach, their state saved alongside --------------------------


def shaped(kind, model, seed):
    if kind == "microbatch":
        return MicrobatchNoise(
            model.parameters(), covariance_multiplier=0.05, micro_batch_size=4, seed=seed
        )
    if kind == "diagonal":
        return DiagonalNoise(
            model.parameters(), covariance_multiplier=0.05, micro_batch_size=4, seed=seed
        )
    return MultiplicativeNoise(covariance_multiplier=0.05, global_batch_size=16, seed=seed)


def hand_loop(model, opt, noise, first, last, k=4):
    """The documented by-hand loop: the chain's hooks around the accumulation, then the step."""
    chain = TransformChain([noise])
    for s in range(first, last):
        g = torch.Generator().manual_seed(2000 + s)
        x, y = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
        info = UpdateInfo(step=s, lr=LR)
        chain.begin_update(k, info)
        opt.zero_grad()
        for j, (xj, yj) in enumerate(zip(x.chunk(k), y.chunk(k), strict=True)):
            losses = (model(xj) - yj).pow(2).mean(1)
            w = chain.loss_weights(len(xj), xj.device, info)
            ((losses if w is None else w * losses).sum() / len(x)).backward()
            chain.after_microbatch(j)
        chain.before_step(info)
        opt.step()
        chain.after_step(info)


def build_shaped(kind, seed=0, noise_seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    return model, opt, shaped(kind, model, noise_seed)


KINDS = ["microbatch", "diagonal", "multiplicative"]


@pytest.mark.parametrize("kind", KINDS)
def test_shaped_kinds_are_refused_by_attach_with_the_way_to_save_them(kind):
    model, opt, noise = build_shaped(kind)
    with pytest.raises(ValueError, match=r"per micro-batch.*state_dict\(\)"):
        noise.attach(opt)


@pytest.mark.parametrize("kind", KINDS)
def test_shaped_kinds_state_dict_saved_alongside_resumes_exactly(kind):
    model, opt, noise = build_shaped(kind)
    hand_loop(model, opt, noise, 0, 3)
    ckpt = roundtrip(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "noise": noise.state_dict()}
    )

    model2, opt2, noise2 = build_shaped(kind, seed=7, noise_seed=99)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    noise2.load_state_dict(ckpt["noise"])
    hand_loop(model2, opt2, noise2, 3, 6)

    ref_model, ref_opt, ref = build_shaped(kind)
    hand_loop(ref_model, ref_opt, ref, 0, 6)
    assert_equal(weights(model2), weights(ref_model))
    assert noise2.t == ref.t == 6
    assert torch.equal(noise2.generator.get_state(), ref.generator.get_state())


@pytest.mark.parametrize("kind", KINDS)
def test_shaped_kinds_are_stateful_for_dcp(tmp_path, kind):
    model, opt, noise = build_shaped(kind)
    assert isinstance(noise, Stateful)
    hand_loop(model, opt, noise, 0, 3)
    dcp.save({"model": model.state_dict(), "noise": noise}, checkpoint_id=tmp_path)
    model2, opt2, noise2 = build_shaped(kind, seed=7, noise_seed=99)
    state = {"model": model2.state_dict(), "noise": noise2}
    dcp.load(state, checkpoint_id=tmp_path)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(roundtrip(opt.state_dict()))  # a copy: load would share the buffers
    hand_loop(model2, opt2, noise2, 3, 6)
    hand_loop(model, opt, noise, 3, 6)
    assert_equal(weights(model2), weights(model))
    assert noise2.t == noise.t == 6
