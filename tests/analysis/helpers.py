"""Small models, data and closed-form operators shared by the analysis tests."""

from __future__ import annotations

import torch
from torch import nn


def spd_with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q`` (float64)."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(eigenvalues.to(torch.float64)) @ q.T


class TinyMLP(nn.Module):
    """5-8-3 with softplus, so the Hessian has curvature everywhere (no ReLU kinks)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.softplus(self.fc1(x)))


class TinyBNNet(nn.Module):
    """Linear -> BatchNorm1d -> tanh -> Dropout -> Linear: BN and dropout both present."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def make_data(
    n: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def make_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP().double()


def make_bn_net(seed: int = 1) -> TinyBNNet:
    """A BN net whose running statistics hold non-trivial values, as after training."""
    torch.manual_seed(seed)
    model = TinyBNNet().double()
    model.train()
    with torch.no_grad():
        for s in range(3):
            model(make_data(32, seed=100 + s)[0])
    model.eval()
    return model


def state_snapshot(model: nn.Module) -> dict:
    """Everything an analysis must leave alone: parameters, buffers, flags, ``.grad``."""
    named = list(model.named_parameters())
    return {
        "params": {n: p.detach().clone() for n, p in named},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in named},
        "requires_grad": {n: p.requires_grad for n, p in named},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "bn": {
            n: (m.momentum, m.track_running_stats)
            for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        },
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("params", "buffers"):
        assert before[key].keys() == after[key].keys()
        for name in before[key]:
            assert torch.equal(before[key][name], after[key][name]), f"{key} {name} changed"
    for name, g in before["grads"].items():
        h = after["grads"][name]
        assert (g is None and h is None) or torch.equal(g, h), f"grad of {name} changed"
    for key in ("requires_grad", "training", "bn"):
        assert before[key] == after[key], f"{key} changed"
