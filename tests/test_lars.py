"""LARS against its update equations, written out here per form, over 10 steps of a warmup LR
that changes every step (float64, so the comparison is tight)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from largebatch.optim import LARS, LARS_FORMS, lars_param_groups

STEPS = 10
LRS = [0.02 + 0.48 * k / (STEPS - 1) for k in range(STEPS)]  # linear warmup, a new LR each step
M, WD, ETA = 0.9, 5e-3, 0.02


def make_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    return model.double()


X = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
Y = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def loss_of(model):
    return (model(X) - Y).pow(2).mean()


def grads_of(model, weights):
    """The gradient at ``weights`` (in ``model.parameters()`` order), without an optimizer."""
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(probe.parameters(), weights, strict=True):
            p.copy_(w)
    return list(torch.autograd.grad(loss_of(probe), list(probe.parameters())))


def norm(t):
    return t.norm().item()


def reference(form, model, *, eps, nesterov=False, lrs=LRS, wd=WD, excluded_wd=0.0):
    """The form's equations, one tensor at a time. Biases (ndim 1) are excluded: r = 1 and their
    own weight decay ``excluded_wd``."""
    w = [p.detach().clone() for p in model.parameters()]
    buf = [torch.zeros_like(t) for t in w]
    for lr in lrs:
        g = grads_of(model, w)
        for i in range(len(w)):
            wi, gi = w[i], g[i]
            if wi.ndim <= 1:  # excluded: plain momentum SGD on g + wd w
                r, d = 1.0, gi + excluded_wd * wi
            elif form == "you2017":
                d = gi + wd * wi
                den = norm(gi) + wd * norm(wi) + eps
                r = ETA * norm(wi) / den if norm(wi) > 0 and den > 0 else 1.0
            elif form == "optax":
                d = gi + wd * wi
                r = ETA * norm(wi) / (norm(d) + eps) if norm(wi) > 0 and norm(d) > 0 else 1.0
            elif form == "timm":
                d = gi + wd * wi
                den = norm(gi) + wd * norm(wi) + eps
                r = ETA * norm(wi) / den if norm(wi) > 0 and norm(gi) > 0 else 1.0
            elif form == "larc":
                if norm(wi) > 0 and norm(gi) > 0:
                    den = norm(gi) + wd * norm(wi) + eps
                    r = min(ETA * norm(wi) / den / lr, 1.0)
                    d = gi + wd * wi
                else:
                    r, d = 1.0, gi
            if form in ("you2017", "optax"):  # LR inside momentum
                buf[i] = M * buf[i] + lr * r * d
                step = lr * r * d + M * buf[i] if nesterov else buf[i]
                w[i] = wi - step
            else:  # LR outside momentum (torch SGD)
                buf[i] = M * buf[i] + r * d
                step = r * d + M * buf[i] if nesterov else buf[i]
                w[i] = wi - lr * step
    return w


def run(model, opt, lrs=LRS):
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def assert_close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", sorted(LARS_FORMS))
def test_each_form_follows_its_equations_under_warmup(form):
    model = make_model()
    expected = reference(form, model, eps=LARS_FORMS[form].eps)
    opt = LARS(model.parameters(), lr=LRS[0], momentum=M, weight_decay=WD, eta=ETA, form=form)
    assert_close(run(model, opt), expected)


@pytest.mark.parametrize("form", ["you2017", "optax", "timm"])
def test_nesterov(form):
    model = make_model()
    expected = reference(form, model, eps=0.0, nesterov=True)
    opt = LARS(
        model.parameters(), lr=0.1, momentum=M, weight_decay=WD, eta=ETA, form=form, eps=0.0,
        nesterov=True,
    )  # fmt: skip
    assert_close(run(model, opt), expected)


def test_larc_clips_some_layers_and_not_others():
    model = make_model()
    opt = LARS(model.parameters(), lr=LRS[0], momentum=M, weight_decay=WD, eta=ETA, form="larc")
    seen = set()
    for lr in LRS:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
        for p in model.parameters():
            if p.ndim > 1:
                seen.add(float(opt.state[p]["trust_ratio"]) == 1.0)
    assert seen == {True, False}  # the test exercises both branches of min(., 1)


def test_lr_inside_and_outside_momentum_agree_at_a_constant_lr_only():
    def final(form, lrs):
        model = make_model()
        opt = LARS(model.parameters(), lr=lrs[0], momentum=M, weight_decay=WD, eta=ETA, form=form,
                   eps=0.0)  # fmt: skip
        return run(model, opt, lrs)

    constant = [0.3] * STEPS
    assert_close(final("you2017", constant), final("timm", constant))
    warm = final("you2017", LRS), final("timm", LRS)
    assert max((a - b).abs().max().item() for a, b in zip(*warm, strict=True)) > 1e-4


def test_excluding_everything_is_torch_sgd():
    model = make_model()
    ref = copy.deepcopy(model)
    opt = LARS(model.parameters(), lr=0.1, momentum=M, form="timm", exclude=lambda p: True)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=M)
    assert_close(run(model, opt), run(ref, sgd))


def test_default_exclusion_and_engine_groups():
    model = make_model()
    opt = LARS(model.parameters(), lr=0.1, weight_decay=WD)
    weights, excluded = opt.param_groups
    assert all(p.ndim == 2 for p in weights["params"]) and weights["trust_ratio"]
    assert weights["weight_decay"] == WD
    assert all(p.ndim == 1 for p in excluded["params"])
    assert not excluded["trust_ratio"] and excluded["weight_decay"] == 0.0

    # the engine's groups: bias_and_norm decayed but without trust ratio
    model = make_model()
    groups = lars_param_groups(model, weight_decay=WD, decay_bias_and_norm=True)
    assert [g["name"] for g in groups] == ["weights", "bias_and_norm"]
    opt = LARS(groups, lr=LRS[0], momentum=M, eta=ETA)
    expected = reference("you2017", make_model(), eps=0.0, excluded_wd=WD)  # a fresh copy
    assert_close(run(model, opt), expected)


@pytest.mark.parametrize(
    "form, expected_ratio",
    [("you2017", ETA / WD), ("optax", ETA / WD), ("timm", 1.0), ("larc", 1.0)],
)
def test_zero_gradient(form, expected_ratio):
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    opt = LARS([w], lr=0.1, momentum=0.0, weight_decay=WD, eta=ETA, form=form)
    w.grad = torch.zeros_like(w)
    before = w.detach().clone()
    opt.step()
    assert float(opt.state[w]["trust_ratio"]) == pytest.approx(expected_ratio, rel=1e-6)
    decay = 0.0 if form == "larc" else WD  # apex adds no weight decay on a zero norm
    torch.testing.assert_close(w.detach(), before - 0.1 * expected_ratio * decay * before)


@pytest.mark.parametrize("form", sorted(LARS_FORMS))
def test_zero_weights_get_ratio_one(form):
    w = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = LARS([w], lr=0.1, momentum=0.0, weight_decay=WD, eta=ETA, form=form)
    w.grad = torch.ones_like(w)
    opt.step()
    assert float(opt.state[w]["trust_ratio"]) == 1.0
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1, dtype=torch.float64))


def test_resume_from_state_dict_is_exact():
    model = make_model()
    opt = LARS(model.parameters(), lr=0.1, momentum=M, weight_decay=WD, eta=ETA)
    run(model, opt, LRS[:5])
    sd_model, sd_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    straight = run(model, opt, LRS[5:])

    model2 = make_model()
    model2.load_state_dict(sd_model)
    opt2 = LARS(model2.parameters(), lr=0.1, momentum=M, weight_decay=WD, eta=ETA)
    opt2.load_state_dict(sd_opt)
    assert_close(run(model2, opt2, LRS[5:]), straight)


def test_closure_and_bad_arguments():
    model = make_model()
    opt = LARS(model.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        return loss.detach()

    assert math.isfinite(opt.step(closure).item())
    with pytest.raises(ValueError, match="valid: you2017, optax, timm, larc"):
        LARS(model.parameters(), lr=0.1, form="lamb")
    with pytest.raises(ValueError, match="momentum"):
        LARS(model.parameters(), lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="nesterov"):
        LARS(model.parameters(), lr=0.1, form="larc", nesterov=True)
