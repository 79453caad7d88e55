"""``transform.attach(optimizer)`` runs the transform once per update, on the final gradient,
whichever way ``step`` is called, and its state rides in ``optimizer.state_dict()``.

Expected weights are computed by hand from the noise the transform reports (it records every
draw), so each test says exactly what the update must be.
"""

from __future__ import annotations

import io

import pytest
import torch

from largebatch.gradient.attach import STATE_KEY, attach
from largebatch.gradient.base import GradientTransform, TransformChain, UpdateInfo
from largebatch.gradient.noise import GradientNoise

LR = 0.1


class RecordingNoise(GradientTransform):
    """Adds N(0, 1) * std from its own generator; records what it saw and what it added."""

    name = "rec"

    def __init__(self, params, std=0.5, seed=0, stage="gradient", name="rec"):
        self.params = list(params)
        self.std = std
        self.stage = stage
        self.name = name
        self.t = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.seen: list[list[torch.Tensor]] = []  # the gradients (or weights) before
        self.drawn: list[list[torch.Tensor]] = []  # the noise added
        self.infos: list[UpdateInfo] = []

    @torch.no_grad()
    def apply_(self, grads, info):
        self.seen.append([g.clone() for g in grads])
        noise = [torch.randn(g.shape, generator=self.generator) * self.std for g in grads]
        torch._foreach_add_(grads, noise)
        self.drawn.append(noise)
        self.infos.append(info)
        self.t += 1

    def state_dict(self):
        return {"t": self.t, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.t = state["t"]
        self.generator.set_state(state["generator"])


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    return model, x, y


def loss_fn(model, x, y):
    return (model(x) - y).pow(2).mean()


def grads_at(model, x, y):
    """The fresh gradient of the loss at the model's current weights (no optimizer involved)."""
    params = list(model.parameters())
    return torch.autograd.grad(loss_fn(model, x, y), params)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def sgd(w, d):
    """Plain SGD's update as torch computes it: ``w - lr d`` (one fused multiply-add)."""
    return w.add(d, alpha=-LR)


def assert_equal(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_plain_step_adds_the_noise_to_the_gradient():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    noise = RecordingNoise(model.parameters())
    noise.attach(opt)
    for _ in range(3):
        w0, g = weights(model), grads_at(model, x, y)
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
        assert_equal(noise.seen[-1], g)
        n = noise.drawn[-1]
        assert_equal(weights(model), [sgd(w, gi + ni) for w, gi, ni in zip(w0, g, n, strict=True)])
    assert noise.t == 3
    assert [i.step for i in noise.infos] == [0, 1, 2]
    assert all(i.lr == LR for i in noise.infos)


@pytest.mark.parametrize("as_keyword", [False, True])
def test_closure_noise_follows_the_closures_backward(as_keyword):
    """Lightning-style: backward (and zero_grad) happen inside the closure, after pre-hooks."""
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    noise = RecordingNoise(model.parameters())
    noise.attach(opt)
    for _ in range(3):
        w0, g = weights(model), grads_at(model, x, y)
        # stale gradients from elsewhere, which the closure must replace
        for p in model.parameters():
            p.grad = torch.full_like(p, 100.0)

        def closure():
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            return loss

        loss = opt.step(closure=closure) if as_keyword else opt.step(closure)
        assert loss.item() == pytest.approx(loss_fn(model, x, y).item(), abs=10)  # the loss
        assert_equal(noise.seen[-1], g)  # the fresh gradient, not the stale 100s
        n = noise.drawn[-1]
        assert_equal(weights(model), [sgd(w, gi + ni) for w, gi, ni in zip(w0, g, n, strict=True)])
    assert noise.t == 3


def test_closure_evaluated_twice_is_refused():
    model, x, y = make()
    opt = torch.optim.LBFGS(model.parameters(), lr=LR, max_iter=3)
    RecordingNoise(model.parameters()).attach(opt)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="closure ran twice"):
        opt.step(closure)


def test_gradient_accumulation_once_per_update():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    noise = RecordingNoise(model.parameters())
    noise.attach(opt)
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    w0 = weights(model)
    g = [a + b for a, b in zip(*(grads_at(model, xb, yb) for xb, yb in halves), strict=True)]
    opt.zero_grad()
    for xb, yb in halves:
        loss_fn(model, xb, yb).backward()
    assert noise.t == 0
    opt.step()
    assert noise.t == 1
    for s, gi in zip(noise.seen[0], g, strict=True):
        torch.testing.assert_close(s, gi)
    n = noise.drawn[0]
    assert_equal(
        weights(model), [sgd(w, si + ni) for w, si, ni in zip(w0, noise.seen[0], n, strict=True)]
    )


def test_grad_scaler_noise_after_unscaling_and_skipped_steps_do_not_count():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    noise = RecordingNoise(model.parameters())
    noise.attach(opt, scaler=scaler)

    # a normal step: the transform sees the unscaled gradient (powers of two: exact)
    w0, g = weights(model), grads_at(model, x, y)
    opt.zero_grad()
    scaler.scale(loss_fn(model, x, y)).backward()
    scaler.step(opt)
    scaler.update()
    assert noise.t == 1
    assert_equal(noise.seen[0], g)
    n = noise.drawn[0]
    assert_equal(weights(model), [sgd(w, gi + ni) for w, gi, ni in zip(w0, g, n, strict=True)])

    # an overflowing step: skipped, weights unchanged, t unchanged, scale backed off
    w1 = weights(model)
    opt.zero_grad()
    scaler.scale(loss_fn(model, x, y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert noise.t == 1 and len(noise.drawn) == 1
    assert_equal(weights(model), w1)
    assert scaler.get_scale() == 2.0**9

    # and the next good step is update t = 1
    opt.zero_grad()
    scaler.scale(loss_fn(model, x, y)).backward()
    scaler.step(opt)
    scaler.update()
    assert noise.t == 2 and [i.step for i in noise.infos] == [0, 1]


def test_grad_scaler_refuses_a_plain_step_on_scaled_gradients():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    attach(RecordingNoise(model.parameters()), opt, scaler=scaler)
    scaler.scale(loss_fn(model, x, y)).backward()
    with pytest.raises(RuntimeError, match="not unscaled"):
        opt.step()


def test_grad_scaler_with_a_fused_optimizer():
    """fused=True unscales inside its kernel: the hook unscales first and skips on inf."""
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    noise = RecordingNoise(model.parameters())
    noise.attach(opt, scaler=scaler)
    w0, g = weights(model), grads_at(model, x, y)
    scaler.scale(loss_fn(model, x, y)).backward()
    scaler.step(opt)
    scaler.update()
    assert noise.t == 1
    assert_equal(noise.seen[0], g)
    n = noise.drawn[0]
    for a, e in zip(
        weights(model), [sgd(w, gi + ni) for w, gi, ni in zip(w0, g, n, strict=True)], strict=True
    ):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)

    w1 = weights(model)
    opt.zero_grad()
    scaler.scale(loss_fn(model, x, y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert noise.t == 1
    assert_equal(weights(model), w1)
    assert [i.step for i in noise.infos] == [0]


def test_update_stage_runs_after_step():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    noise = RecordingNoise(model.parameters(), stage="update")
    noise.attach(opt)
    w0, g = weights(model), grads_at(model, x, y)
    loss_fn(model, x, y).backward()
    opt.step()
    assert_equal(
        noise.seen[0], [sgd(w, gi) for w, gi in zip(w0, g, strict=True)]
    )  # saw the stepped weights
    assert_equal([p.grad for p in model.parameters()], g)  # gradient untouched
    assert_equal(
        weights(model), [s + n for s, n in zip(noise.seen[0], noise.drawn[0], strict=True)]
    )


def test_chain_attaches_in_order():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    a = RecordingNoise(model.parameters(), seed=1, name="a")
    b = RecordingNoise(model.parameters(), seed=2, name="b")
    handle = TransformChain([a, b]).attach(opt)
    loss_fn(model, x, y).backward()
    opt.step()
    # b saw a's output
    assert_equal(b.seen[0], [s + n for s, n in zip(a.seen[0], a.drawn[0], strict=True)])
    assert handle.key == "a+b"
    assert set(opt.state_dict()[STATE_KEY]) == {"a+b"}


def test_state_rides_in_the_optimizer_state_dict_and_resumes_exactly():
    def run(steps, resume_from=None):
        model, x, y = make()
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        noise = RecordingNoise(model.parameters(), seed=0 if resume_from is None else 99)
        noise.attach(opt)
        if resume_from is not None:
            model.load_state_dict(resume_from["model"])
            opt.load_state_dict(resume_from["opt"])
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model, x, y).backward()
            opt.step()
        return model, opt, noise

    model, opt, noise = run(3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    assert opt.state_dict()[STATE_KEY]["rec"]["step"] == 3
    assert opt.state_dict()[STATE_KEY]["rec"]["transforms"]["rec"]["t"] == 3
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    resumed_model, resumed_opt, resumed = run(2, resume_from=ckpt)
    straight_model, _, straight = run(5)
    assert resumed.t == straight.t == 5
    assert [i.step for i in resumed.infos] == [3, 4]
    assert_equal(resumed.drawn[0], straight.drawn[3])
    assert_equal(weights(resumed_model), weights(straight_model))
    # the optimizer's own state loaded as usual, without our entry
    assert STATE_KEY in resumed_opt.state_dict()


def test_loading_a_checkpoint_without_the_entry_warns():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sd = opt.state_dict()
    RecordingNoise(model.parameters()).attach(opt)
    with pytest.warns(UserWarning, match="no state for the attached transforms"):
        opt.load_state_dict(sd)


def test_detach_removes_every_hook():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    noise = RecordingNoise(model.parameters())
    handle = noise.attach(opt)
    with pytest.raises(ValueError, match="already attached"):
        noise.attach(opt)
    handle.remove()
    assert STATE_KEY not in opt.state_dict()
    w0, g = weights(model), grads_at(model, x, y)
    loss_fn(model, x, y).backward()
    opt.step()
    assert noise.t == 0
    assert_equal(weights(model), [sgd(w, gi) for w, gi in zip(w0, g, strict=True)])
    with noise.attach(opt):  # re-attaching works after remove; a context manager detaches
        opt.step()
    assert noise.t == 1
    opt.step()
    assert noise.t == 1


def test_per_microbatch_transforms_are_refused():
    class Weights(GradientTransform):
        name = "weights"

        def __init__(self, params):
            self.params = list(params)

        def apply_(self, grads, info):
            pass

        def loss_weights(self, num_examples, device, info):
            return torch.ones(num_examples)

    model, _, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match="per micro-batch"):
        Weights(model.parameters()).attach(opt)


def test_gradient_noise_attach_with_a_closure_adds_exactly_its_noise():
    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    noise = GradientNoise(model.parameters(), alpha=1e-2, gamma=0.55, seed=3)
    noise.attach(opt)
    # the noise the transform draws, reported by a twin applied to zeros
    twin = GradientNoise(
        [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()],
        alpha=1e-2,
        gamma=0.55,
        seed=3,
    )
    for t in range(3):
        zeros = [torch.zeros_like(p) for p in model.parameters()]
        twin.apply_(zeros, UpdateInfo(step=t, lr=LR))
        w0, g = weights(model), grads_at(model, x, y)

        def closure():
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)
        for a, e in zip(
            weights(model),
            [sgd(w, gi + n) for w, gi, n in zip(w0, g, zeros, strict=True)],
            strict=True,
        ):
            torch.testing.assert_close(a, e, rtol=0, atol=1e-7)
    assert noise.t == 3
    assert STATE_KEY in opt.state_dict()


def test_lightning_trainer_weights_move_by_exactly_gradient_plus_noise(tmp_path):
    L = pytest.importorskip(
        "lightning", reason="lightning is not installed (pip install -e .[test])"
    )
    model_, x, y = make()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model_
            self.noise = RecordingNoise(self.net.parameters())
            self.weights_before: list[list[torch.Tensor]] = []

        def training_step(self, batch, batch_idx):
            self.weights_before.append(weights(self.net))
            xb, yb = batch
            return loss_fn(self.net, xb, yb)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.net.parameters(), lr=LR)
            self.noise.attach(opt)
            return opt

    module = Module()
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
    noise = module.noise
    assert noise.t == 3
    for k in range(3):
        w0 = module.weights_before[k]
        probe = torch.nn.Linear(3, 2)
        with torch.no_grad():
            for p, w in zip(probe.parameters(), w0, strict=True):
                p.copy_(w)
        g = grads_at(probe, x, y)
        assert_equal(noise.seen[k], g)  # the fresh gradient of this step's batch
        after = module.weights_before[k + 1] if k < 2 else weights(module.net)
        assert_equal(
            after, [sgd(w, gi + n) for w, gi, n in zip(w0, g, noise.drawn[k], strict=True)]
        )
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["optimizer_states"][0][STATE_KEY]["rec"]["transforms"]["rec"]["t"] == 3


def test_a_wrapper_without_step_hooks_is_unwrapped():
    """accelerate's AcceleratedOptimizer (what the HF Trainer hands its callbacks) never runs
    torch.optim.Optimizer.__init__, so it has no step hooks: attach goes to the optimizer inside."""

    class Wrapper(torch.optim.Optimizer):
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def step(self, closure=None):
            return self.optimizer.step(closure)

        def state_dict(self):
            return self.optimizer.state_dict()

    model, x, y = make()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    noise = RecordingNoise(model.parameters())
    wrapped = Wrapper(opt)
    noise.attach(wrapped)
    w0, g = weights(model), grads_at(model, x, y)
    loss_fn(model, x, y).backward()
    wrapped.step()
    assert noise.t == 1 and STATE_KEY in wrapped.state_dict()
    expected = [sgd(w, gi + n) for w, gi, n in zip(w0, g, noise.drawn[0], strict=True)]
    assert_equal(weights(model), expected)
    with pytest.raises(TypeError, match="attach needs a torch.optim.Optimizer, got object"):
        RecordingNoise(model.parameters(), name="other").attach(object())
