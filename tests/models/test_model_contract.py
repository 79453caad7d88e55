"""Contract over every entry of the model registry: shape, parameter count, one step helps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from largebatch.config import ModelConfig
from largebatch.models import MODELS, build_model

# A small example input per kind that every model of the kind accepts.
INPUT_SHAPES = {"vector": (1, 28, 28), "sequence": (40,), "image": (3, 32, 32)}
# Models too heavy for a 32x32 batch of 8 on a CPU get a smaller batch (ResNet-50: 2 at 64x64
# keeps its last stage at 2x2, so BatchNorm still has several values per channel).
SPECIAL = {"resnet50": ((3, 64, 64), 2)}


def _example(name: str) -> tuple[tuple[int, ...], int]:
    return SPECIAL.get(name, (INPUT_SHAPES[MODELS[name].input_kind], 8))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name):
    shape, batch = _example(name)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), shape, 7)
    out = model(torch.randn(batch, *shape))
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(n for n, m in MODELS.items() if m.reference_params))
def test_reference_parameter_count(name):
    info = MODELS[name]
    assert info.reference_classes is not None
    shape = INPUT_SHAPES[info.input_kind] if name not in SPECIAL else SPECIAL[name][0]
    shape = (3, 224, 224) if info.input_kind == "image" else shape
    model = build_model(ModelConfig(name=name), shape, info.reference_classes)
    assert sum(p.numel() for p in model.parameters()) == info.reference_params


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_sgd_step_lowers_the_loss(name):
    """Train mode both times (the same batch, so BatchNorm sees the same statistics), a step
    along the normalised gradient small enough for the first-order decrease to dominate."""
    shape, batch = _example(name)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), shape, 5)
    model.train()
    x = torch.randn(batch, *shape)
    y = torch.arange(batch) % 5
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(x), y)
    loss.backward()
    grad_sq = sum(float((p.grad**2).sum()) for p in model.parameters() if p.grad is not None)
    assert grad_sq > 0
    # Step length 1e-2 * loss / |g|: predicted decrease is 1% of the loss.
    lr = 1e-2 * loss.item() / grad_sq
    torch.optim.SGD(model.parameters(), lr=lr).step()
    with torch.no_grad():
        after = loss_fn(model(x), y)
    assert after.item() < loss.item()
