"""The sharpness-aware kinds through a compiled model and under bf16 autocast, on a CPU.

The perturbation moves the weights in place between two calls of the model: a compiled model
(``aot_eager`` here: the same graph capture and autograd as the default backend, without code
generation, so the test needs no C++ compiler) must see the moved weights, exactly as eager does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from largebatch.engine.update import Sharpness, UpdateParts, optimizer_update
from largebatch.gradient.base import TransformChain, UpdateInfo

KINDS = [
    Sharpness("sam", 0.05),
    Sharpness("msam", 0.05),
    Sharpness("momentum", 0.3),
    Sharpness("msam", 0.005, normalize=False),
]


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return model, x, y


def run_updates(model, sharpness, compiled=False, amp="none", steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    call = torch.compile(model, backend="aot_eager") if compiled else model
    parts = UpdateParts(call, optimizer, TransformChain([]), amp=amp, sharpness=sharpness)
    _, x, y = model_and_data()
    for t in range(steps):
        batches = [(x[:16], y[:16]), (x[16:], y[16:])]
        optimizer_update(parts, batches, 32, UpdateInfo(t, 0.1))
    return model


@pytest.mark.parametrize("sharpness", KINDS, ids=lambda s: f"{s.kind}-{s.normalize}")
def test_compiled_model_follows_eager(sharpness):
    eager, _, _ = model_and_data()
    compiled = copy.deepcopy(eager)
    run_updates(eager, sharpness)
    run_updates(compiled, sharpness, compiled=True)
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    plain, _, _ = model_and_data()
    run_updates(plain, None)
    assert not torch.allclose(plain[0].weight, eager[0].weight)  # the kind did something


@pytest.mark.parametrize("sharpness", KINDS, ids=lambda s: f"{s.kind}-{s.normalize}")
def test_bf16_autocast_stays_close_to_float32(sharpness):
    full, _, _ = model_and_data()
    half = copy.deepcopy(full)
    run_updates(full, sharpness)
    run_updates(half, sharpness, amp="bf16")
    for a, b in zip(full.parameters(), half.parameters(), strict=True):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, atol=0.05, rtol=0.05)  # bf16's 8-bit mantissa
