"""The ResNets' published structure: parameter counts, shortcuts, zero-init, input sizes."""

from __future__ import annotations

import torch

from largebatch.config import ModelConfig
from largebatch.models import build_model
from largebatch.models.cifar_resnet import CifarResNet, PadShortcut
from largebatch.models.resnet import resnet18, resnet50


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_cifar_resnet_option_a_counts():
    # Option A shortcuts are parameter-free: the counts He et al. round to 0.27M and 0.85M.
    assert _params(CifarResNet(3)) == 269_722
    assert _params(CifarResNet(9)) == 853_018
    depth = sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in CifarResNet(3).modules())
    assert depth == 20


def test_pad_shortcut_subsamples_and_pads():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()


def test_resnet_works_on_small_and_grayscale_images():
    model = build_model(ModelConfig(name="resnet18"), (1, 28, 28), 10).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    model = build_model(ModelConfig(name="resnet20"), (1, 28, 28), 10).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_zero_init_residual_makes_blocks_identity_at_start():
    model = resnet18(10, zero_init_residual=True)
    zeroed = [m.bn2.weight for m in model.modules() if hasattr(m, "bn2") and hasattr(m, "conv2")]
    assert zeroed and all((w == 0).all() for w in zeroed)


def test_without_batchnorm():
    model = build_model(ModelConfig(name="resnet20", batchnorm=False), (3, 32, 32), 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet50_structure():
    model = resnet50(1000)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # 1 stem + 16 blocks x 3 + 4 projection shortcuts.
    assert len(convs) == 1 + 16 * 3 + 4
    assert model.fc.in_features == 2048
