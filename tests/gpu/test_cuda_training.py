"""Training on CUDA: bf16 + channels_last, torch.compile, stop + resume bit-identical."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from largebatch.checkpoint import load_checkpoint
from largebatch.config import load_config, resolved
from largebatch.distributed import DistContext
from largebatch.engine import build_run, train
from largebatch.experiments.bench import EngineSteps
from largebatch.rundir import read_metrics

from .conftest import DEVICE, GPU, image_tree, tiny_config

pytestmark = GPU


def params_of(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_bf16_channels_last_run(tmp_path, device):
    root = image_tree(tmp_path / "images")
    cfg = load_config(
        None,
        [
            "data.name=image_folder",
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.image_size=32",
            "data.val_fraction=0.25",
            "data.augment=true",
            "model.name=resnet20",
            "train.amp=bf16",
            "train.channels_last=true",
            "train.epochs=2",
            "train.global_batch_size=8",
            "train.progress=false",
            f"train.device={DEVICE}",
            "optim.lr=0.05",
            "optim.base_batch_size=8",
        ],
    )
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2
    assert all(math.isfinite(r["running_loss"]) and math.isfinite(r["val_loss"]) for r in rows)

    # The step itself: weights and inputs in channels_last, the convolutions computed in bf16.
    run = build_run(resolved(cfg), DistContext(), device)
    conv = next(m for m in run.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen: dict[str, object] = {}

    def hook(module, inputs, output):
        seen["channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)
        seen["dtype"] = output.dtype

    handle = conv.register_forward_hook(hook)
    out = EngineSteps(run)()
    handle.remove()
    assert seen == {"channels_last": True, "dtype": torch.bfloat16}
    assert out.loss_sum.device.type == device.type and torch.isfinite(out.loss_sum)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_run_matches_eager(tmp_path, device, no_tf32, mode):
    eager = train(tiny_config(), tmp_path / "eager")
    cfg = tiny_config("train.compile=true", f"train.compile_mode={mode}")
    compiled = train(cfg, tmp_path / mode)
    assert (eager.status, compiled.status) == ("completed", "completed")
    a, b = params_of(tmp_path / "eager"), params_of(tmp_path / mode)
    assert a.keys() == b.keys()
    for k in a:  # fused kernels round differently; the trajectories stay together
        torch.testing.assert_close(b[k], a[k], atol=1e-3, rtol=1e-3), k
    run = build_run(resolved(cfg), DistContext(), device)
    assert run.parts.model is not run.model  # the update calls the compiled wrapper
    assert isinstance(run.parts.model, torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.parametrize(
    "extra",
    [
        ["noise.alpha=1e-3", "model.dropout=0.2"],
        ["noise.kind=microbatch", "train.micro_batch_size=16", "noise.match=step"],
    ],
    ids=["isotropic+dropout", "microbatch"],
)
def test_stop_and_resume_is_bit_identical(tmp_path, extra):
    over = ["train.epochs=4", "optim.schedule=cosine", *extra]
    if "noise.match=step" in extra:
        over.append("optim.base_batch_size=16")  # c = 1/16 - 1/64 > 0: noise is really drawn
    cfg = tiny_config(*over)
    straight = train(cfg, tmp_path / "straight")
    stopped = train(cfg, tmp_path / "split", stop_after_epochs=2)
    assert (straight.status, stopped.status) == ("completed", "stopped")
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert resumed.status == "completed"
    a, b = params_of(tmp_path / "straight"), params_of(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """A stop signal in the middle of an epoch checkpoints the generators there (the CUDA
    augmentation/dropout states included); the resumed run ends where the straight one does."""
    import os
    import signal

    from largebatch.models.mlp import MLP

    cfg = tiny_config("train.epochs=2", "model.dropout=0.2", "noise.alpha=1e-3")
    train(cfg, tmp_path / "straight")
    calls = {"n": 0}

    def hook(module, inputs, output):
        if isinstance(module, MLP) and module.training:
            calls["n"] += 1
            if calls["n"] == 10:  # update 10 of 14: epoch 2, mid-way
                os.kill(os.getpid(), signal.SIGTERM)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        stopped = train(cfg, tmp_path / "split")
    finally:
        handle.remove()
    assert stopped.status == "stopped"
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["step"] == 10
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert resumed.status == "completed"
    a, b = params_of(tmp_path / "straight"), params_of(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "extra",
    [
        ["optim.sam=sam"],
        ["optim.sam=msam", "train.micro_batch_size=16"],
        ["optim.sam=momentum"],
        ["optim.grad_penalty=0.01", "optim.grad_penalty_form=finite_difference"],
    ],
    ids=["sam", "msam", "momentum", "penalty-fd"],
)
def test_sharpness_kinds_compiled_match_eager_and_run_in_bf16(tmp_path, device, no_tf32, extra):
    """The perturbation moves the weights in place between calls of the compiled model: the
    compiled run must follow the eager one, and bf16 autocast must stay finite."""
    eager = train(tiny_config(*extra), tmp_path / "eager")
    compiled = train(tiny_config(*extra, "train.compile=true"), tmp_path / "compiled")
    bf16 = train(tiny_config(*extra, "train.amp=bf16"), tmp_path / "bf16")
    assert (eager.status, compiled.status, bf16.status) == ("completed",) * 3
    a, b = params_of(tmp_path / "eager"), params_of(tmp_path / "compiled")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-3, rtol=1e-3), k
    rows = read_metrics(tmp_path / "bf16")
    assert all(math.isfinite(r["running_loss"]) for r in rows)
