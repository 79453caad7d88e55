"""The Caltech101 and CIFAR presets load, validate, and hold the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from largebatch.config import load_config, resolved
from largebatch.optim.scaling import scale_lr

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = {  # file -> (global batch, noise alpha)
    "caltech101_fig4_b32.yaml": (32, 0.0),
    "caltech101_fig4_b64.yaml": (64, 0.0),
    "caltech101_fig4_b128.yaml": (128, 0.0),
    "caltech101_fig5_train_longer_b128.yaml": (128, 0.0),
    "caltech101_table2_noise_b64.yaml": (64, 1e-5),
    "caltech101_table2_noise_b128.yaml": (128, 1e-5),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets(name):
    text = (CONFIGS / name).read_text()
    assert all(k in text for k in ("# Command:", "# Paper:", "# Time:"))
    cfg = resolved(load_config(CONFIGS / name))
    batch, alpha = PAPER[name]
    assert (cfg.data.name, cfg.model.name) == ("caltech101", "resnet50")
    assert cfg.data.val_fraction == 0.25 and cfg.data.image_size == 224
    assert cfg.train.global_batch_size == batch
    # (lr, B) in {(0.01, 32), (0.02, 64), (0.04, 128)}.
    lr = scale_lr(cfg.optim.lr, cfg.optim.base_batch_size, batch, cfg.optim.scaling)
    assert lr == pytest.approx(0.01 * batch / 32)
    assert cfg.optim.schedule == "paper" and cfg.optim.decay_factor == 0.9
    assert cfg.noise.alpha == alpha and cfg.noise.gamma == 0.55
    assert cfg.train.amp == "bf16" and cfg.train.channels_last
    longer = "train_longer" in name
    assert cfg.train.scale_epochs == longer and cfg.train.epochs == 100


def test_smoke_and_cifar_presets_validate():
    smoke = load_config(CONFIGS / "caltech101_smoke.yaml")
    assert smoke.train.epochs == 1 and smoke.data.image_size == 32
    cifar = load_config(CONFIGS / "cifar10_resnet20.yaml")
    assert (cifar.data.name, cifar.model.name, cifar.optim.milestones) == (
        "cifar10",
        "resnet20",
        [82.0, 123.0],
    )
