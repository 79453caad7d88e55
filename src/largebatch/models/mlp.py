"""Fully connected ReLU networks (Jastrzebski et al.'s 4-layer ReLU MLP is ``hidden=[256]*3``)."""

from __future__ import annotations

import math

from torch import nn

from largebatch.config import ModelConfig
from largebatch.models.registry import ModelInfo, register


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden width -> (Dropout) -> Linear."""

    def __init__(
        self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), list(cfg.hidden), num_classes, cfg.dropout)


register(
    ModelInfo(
        name="mlp",
        description="ReLU MLP on flattened inputs; widths from model.hidden",
        build=_build,
        input_kind="vector",
    )
)
