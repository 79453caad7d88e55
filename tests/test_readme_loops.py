"""README "Your loop, Lightning, the HF Trainer": every block runs, and what it claims holds.

Each block runs in an empty folder (the blocks write their checkpoints there) after the blocks it
continues. Every stop-and-resume is compared with the same training never stopped: the weights
must be bit-identical, in both orders of ``attach`` and loading the optimizer. The SWA test checks
that torch's ``AveragedModel`` over the engine's epoch checkpoints is the engine's ``swa_model``.
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from tests.test_readme import README, python_blocks, section

LOOPS = python_blocks(
    section(README, "## Your loop, Lightning, the HF Trainer: stop and resume exactly")
)


def block(marker: str) -> str:
    (found,) = [b for b in LOOPS if marker in b]
    return found


PLAIN = block("def resume(path, attach_first=True)")
LIGHTNING = block("class Module(L.LightningModule)")
SHAPED = block("class ShapedNoise(L.Callback)")
HF = block("from transformers import")
SAM_LOOP = block("def build_sam(")
SWA = block("AveragedModel(model)")

has_lightning = importlib.util.find_spec("lightning") is not None
has_transformers = importlib.util.find_spec("transformers") is not None
needs_lightning = pytest.mark.skipif(
    not has_lightning, reason="lightning is not installed (pip install -e .[test])"
)
needs_transformers = pytest.mark.skipif(
    not has_transformers or importlib.util.find_spec("accelerate") is None,
    reason="transformers and accelerate are not installed (pip install transformers accelerate)",
)

# Lightning's and the HF Trainer's chatter, and DCP's in-process note, are not what is tested.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*weights_only.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]


def test_the_section_has_a_block_per_loop():
    assert len(LOOPS) == 6
    assert len({PLAIN, LIGHTNING, SHAPED, HF, SAM_LOOP, SWA}) == 6


def run(*blocks: str) -> dict:
    """Execute README blocks in order in one namespace (as the README says they continue)."""
    scope: dict = {"__name__": "readme_loops"}
    for code in blocks:
        exec(compile(code, f"README.md loops block {LOOPS.index(code) + 1}", "exec"), scope)
    return scope


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def ours(record: list[warnings.WarningMessage]) -> list[str]:
    """The warnings largebatch raised (attach, or a load without the transforms' state)."""
    text = [str(w.message) for w in record]
    return [t for t in text if t.startswith(("attach:", "optimizer.load_state_dict:"))]


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- your own loop --------------------------------------------------------------------------------


def test_plain_loop_resumes_bit_identically_in_either_order(folder):
    torch.manual_seed(123)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scope = run(PLAIN)
        build, train, resume, data = scope["build"], scope["train"], scope["resume"], scope["data"]
        model, optimizer, noise = build()
        noise.attach(optimizer)
        train(model, optimizer, data)  # never stopped
        assert bitwise(weights(scope["model"]), weights(model))  # attach, then load
        assert scope["noise"].t == noise.t == 6

        other, opt, other_noise = resume("ckpt.pt", attach_first=False)  # load, then attach
        assert other_noise.t == 3
        train(other, opt, data[3:])
        assert bitwise(weights(other), weights(model)) and other_noise.t == 6
    assert ours(record) == []

    quiet, quiet_opt, _ = build()  # the noise is not nothing
    train(quiet, quiet_opt, data)
    assert not bitwise(weights(quiet), weights(model))


# -- Lightning ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightning_scope(tmp_path_factory):
    """The plain, the Lightning and the shaped-noise blocks run once (they stop and resume)."""
    if not has_lightning:
        pytest.skip("lightning is not installed (pip install -e .[test])")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.chdir(tmp_path_factory.mktemp("lightning"))
        torch.manual_seed(0)
        yield run(PLAIN, LIGHTNING, SHAPED)


def fit(scope, module, epochs, ckpt_path=None, **extra):
    L = scope["L"]
    trainer = L.Trainer(max_epochs=epochs, **scope["quiet"], **extra)
    trainer.fit(module, scope["loader"], ckpt_path=ckpt_path)
    return trainer


@needs_lightning
@pytest.mark.parametrize("attach_in", ["configure_optimizers", "on_train_start"])
def test_lightning_resumes_bit_identically_in_either_order(lightning_scope, folder, attach_in):
    scope, Module = lightning_scope, lightning_scope["Module"]
    straight = Module(attach_in)
    fit(scope, straight, 3)
    assert straight.noise.t == 24  # 8 updates an epoch
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if attach_in == "configure_optimizers":  # what the block itself ran
            resumed = scope["resumed"]
        else:  # attach after Lightning has loaded the optimizer
            fit(scope, Module(attach_in), 1).save_checkpoint("late.ckpt")
            resumed = Module(attach_in)
            fit(scope, resumed, 3, ckpt_path="late.ckpt")
    assert ours(record) == []
    assert bitwise(weights(resumed), weights(straight)) and resumed.noise.t == 24
    quiet = Module(attach_in="nowhere")  # never attached
    fit(scope, quiet, 3)
    assert not bitwise(weights(quiet), weights(straight))


def shaped_noise(kind, c=1 / 32 - 1 / 128):
    from largebatch.gradient.diagonal_noise import DiagonalNoise
    from largebatch.gradient.microbatch_noise import MicrobatchNoise
    from largebatch.gradient.multiplicative_noise import MultiplicativeNoise

    def make(net):
        if kind == "microbatch":
            return MicrobatchNoise(net.parameters(), covariance_multiplier=c, micro_batch_size=32)
        if kind == "diagonal":
            return DiagonalNoise(net.parameters(), covariance_multiplier=c, micro_batch_size=32)
        return MultiplicativeNoise(covariance_multiplier=c, global_batch_size=128)

    return make


def by_hand(scope, make_noise, epochs, k=4):
    """The documented by-hand loop (``largebatch.gradient.base``): the chain's hooks around the
    accumulation, ``(loss / k).backward()`` per micro-batch, then the step."""
    import torch.nn.functional as F

    from largebatch import TransformChain, UpdateInfo

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )  # ShapedModule's
    chain = TransformChain([make_noise(net)])
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    batches, step = list(scope["loader"]), 0
    for _ in range(epochs):
        for first in range(0, len(batches), k):
            info = UpdateInfo(step=step, lr=0.1)
            chain.begin_update(k, info)
            for j, (x, y) in enumerate(batches[first : first + k]):
                losses = F.cross_entropy(net(x), y, reduction="none")
                w = chain.loss_weights(len(y), y.device, info)
                ((losses if w is None else w * losses).mean() / k).backward()
                chain.after_microbatch(j)
            chain.before_step(info)
            opt.step()
            opt.zero_grad()
            step += 1
    return net


@needs_lightning
@pytest.mark.parametrize("kind", ["microbatch", "diagonal", "multiplicative"])
def test_lightning_shaped_noise_callback_is_the_by_hand_loop_and_resumes(
    lightning_scope, folder, kind
):
    scope, ShapedModule = lightning_scope, lightning_scope["ShapedModule"]
    make = shaped_noise(kind)
    extra = {"accumulate_grad_batches": 4}
    straight = ShapedModule(make)
    fit(scope, straight, 3, **extra)
    noise = straight.shaped.chain.transforms[0]
    assert noise.t == 6  # 2 updates of 4 micro-batches an epoch
    if kind == "microbatch":  # what the block itself ran
        resumed = scope["resumed_shaped"]
    else:
        fit(scope, ShapedModule(make), 1, **extra).save_checkpoint("shaped-kind.ckpt")
        resumed = ShapedModule(make)
        fit(scope, resumed, 3, ckpt_path="shaped-kind.ckpt", **extra)
    assert bitwise(weights(resumed), weights(straight))
    assert resumed.shaped.chain.transforms[0].t == 6
    # the callback's hooks sit where the engine calls them: the by-hand loop's numbers
    for a, b in zip(weights(straight), weights(by_hand(scope, make, 3)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    quiet = ShapedModule(shaped_noise(kind, c=0.0))
    fit(scope, quiet, 3, **extra)
    assert not bitwise(weights(quiet), weights(straight))


@needs_lightning
def test_lightning_weight_averaging_is_the_engines_average(lightning_scope, folder):
    """The README's ``WeightAveraging`` settings average what an ``AveragedModel`` updated at
    the same epoch ends averages."""
    callbacks = pytest.importorskip("lightning.pytorch.callbacks")
    if not hasattr(callbacks, "WeightAveraging"):
        pytest.skip("this Lightning has no WeightAveraging callback")
    from torch.optim.swa_utils import AveragedModel

    scope, Module, L = lightning_scope, lightning_scope["Module"], lightning_scope["L"]
    swa_start_epoch = 2

    class EpochSWA(callbacks.WeightAveraging):
        def should_update(self, step_idx=None, epoch_idx=None):
            return epoch_idx is not None and epoch_idx + 1 >= swa_start_epoch

    class ByHand(L.Callback):
        def __init__(self):
            self.average = None

        def on_train_epoch_end(self, trainer, module):
            if self.average is None:
                self.average = AveragedModel(module.net)
            if trainer.current_epoch + 1 >= swa_start_epoch:
                self.average.update_parameters(module.net)

    averaged = Module()
    fit(scope, averaged, 4, callbacks=[EpochSWA(use_buffers=False)])  # ends holding the average
    hand = ByHand()
    fit(scope, Module(), 4, callbacks=[hand])
    assert int(hand.average.n_averaged) == 3
    assert bitwise(weights(averaged.net), weights(hand.average.module))


# -- the HF Trainer -------------------------------------------------------------------------------


@needs_transformers
def test_hf_trainer_resumes_bit_identically_through_both_paths(folder):
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scope = run(PLAIN, HF)  # both paths, each stopped after 2 updates and resumed
    assert ours(record) == []
    StopAt = scope["StopAt"]
    for make_trainer, order in (
        (scope["with_optimizer"], "attach_then_load"),
        (scope["with_callback"], "load_then_attach"),
    ):
        straight = make_trainer(f"straight-{order}")
        straight.train()
        make_trainer(f"stopped-{order}", [StopAt(2)]).train()
        saved = torch.load(f"stopped-{order}/checkpoint-2/optimizer.pt", weights_only=True)
        assert saved["largebatch"]["noise"]["transforms"]["noise"]["t"] == 2
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            resumed = make_trainer(f"stopped-{order}")
            resumed.train(resume_from_checkpoint=f"stopped-{order}/checkpoint-2")
        assert ours(record) == [], order
        assert bitwise(weights(resumed.model), weights(straight.model)), order
        entry = resumed.optimizer.state_dict()["largebatch"]["noise"]
        assert entry["step"] == 6 and entry["transforms"]["noise"]["t"] == 6
    # the noise moved the weights: the Trainer's own optimizer without the callback differs
    args = scope["arguments"]("quiet", optim="sgd", learning_rate=0.1, lr_scheduler_type="constant")
    quiet = scope["Trainer"](model=scope["Net"](), args=args, train_dataset=scope["examples"])
    quiet.train()
    assert not bitwise(weights(quiet.model), weights(resumed.model))


# -- SAM and SWA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sam", "momentum"])
def test_sam_loop_resumes_bit_identically(folder, kind):
    torch.manual_seed(0)
    scope = run(PLAIN, SAM_LOOP)
    build_sam, train_sam, data = scope["build_sam"], scope["train_sam"], scope["data"]
    straight, opt = build_sam(kind)
    train_sam(straight, opt, data)
    if kind == "sam":  # what the block itself ran
        resumed = scope["model"]
    else:
        model, optimizer = build_sam(kind)
        train_sam(model, optimizer, data[:3])
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, "m.pt")
        resumed, optimizer = build_sam(kind)
        checkpoint = torch.load("m.pt", weights_only=True)
        resumed.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        train_sam(resumed, optimizer, data[3:])
    assert bitwise(weights(resumed), weights(straight))
    plain, plain_opt, _ = scope["build"]()
    scope["train"](plain, plain_opt, data)  # plain SGD: not the same update
    assert not bitwise(weights(plain), weights(straight))


def test_swa_block_averages_the_weights_of_the_epochs_it_says(folder):
    torch.manual_seed(0)
    scope = run(PLAIN, SWA)
    build, train, data = scope["build"], scope["train"], scope["data"]
    model, optimizer, _ = build()
    ends = []
    for _ in range(4):
        train(model, optimizer, data)
        ends.append(weights(model))
    expected = [torch.stack(w).mean(0) for w in zip(*ends[1:], strict=True)]  # epochs 2, 3, 4
    swa = scope["swa"]
    assert int(swa.n_averaged) == 3
    for a, e in zip(weights(swa.module), expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-6)
    assert "swa_model" in torch.load("swa.pt", weights_only=True)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_averaged_model_over_the_engines_checkpoints_is_its_swa_model(
    tmp_path, tiny_mnist1d_overrides, batchnorm
):
    """The engine (``train.swa_start_epoch=1``: every epoch end) stopped after each epoch; torch's
    ``AveragedModel`` over the models of those checkpoints, and ``update_bn`` over the training
    set in order, give the checkpoint's ``swa_model`` bit for bit."""
    from torch.optim.swa_utils import AveragedModel, update_bn

    from largebatch.checkpoint import load_checkpoint
    from largebatch.config import load_config
    from largebatch.data.sampling import plan_batches
    from largebatch.engine import train
    from largebatch.engine.setup import load_data
    from largebatch.models.assembly import assemble_model

    over = [*tiny_mnist1d_overrides, "train.epochs=3", "train.swa_start_epoch=1"]
    if batchnorm:
        over += ["model.name=cnn1d", "model.channels=4", "model.batchnorm=true"]
    cfg = load_config(None, over)
    run_dir, models = tmp_path / "run", []
    for epoch in (1, 2, 3):
        result = train(cfg, run_dir, resume=epoch > 1, stop_after_epochs=epoch)
        assert result.status == ("completed" if epoch == 3 else "stopped")
        shutil.copy(run_dir / "checkpoints" / "last.pt", tmp_path / f"epoch{epoch}.pt")
        models.append(load_checkpoint(tmp_path / f"epoch{epoch}.pt")["model"])
    engine_swa = load_checkpoint(tmp_path / "epoch3.pt")["swa_model"]

    data = load_data(cfg, plan_batches(cfg.train.global_batch_size, None, 1), torch.device("cpu"))
    model = assemble_model(cfg, data.input_shape, data.num_classes, torch.device("cpu"), False)
    swa = AveragedModel(model)
    for state in models:  # the model at the end of epochs 1, 2, 3
        model.load_state_dict(state)
        swa.update_parameters(model)
    inputs = torch.utils.data.DataLoader(data.train.x, batch_size=cfg.train.eval_batch_size)
    update_bn(inputs, swa)
    mine = swa.state_dict()
    assert set(mine) == set(engine_swa) and int(engine_swa["n_averaged"]) == 3
    for key, value in mine.items():
        assert torch.equal(value, engine_swa[key]), key
    last = models[-1]  # an average, not the last epoch's weights
    assert any(
        not torch.equal(mine[f"module.{k}"], v) for k, v in last.items() if v.is_floating_point()
    )
