"""The model registry: a dict of frozen records, one per architecture.

Each entry builds an ``nn.Module`` from the model config, the shape of one input example and the
number of classes. A contract test runs over every entry (forward shape, parameter count where a
reference exists, one SGD step lowers the loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from largebatch.config import ModelConfig

Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    """One line: what it is and what it is for."""
    build: Builder
    input_kind: str
    """What inputs it takes: 'vector' (flattened), 'sequence' (1-D signal), 'image'."""
    reference_params: int | None = None
    """Parameter count of the reference implementation at ``reference_classes`` classes."""
    reference_classes: int | None = None


MODELS: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> ModelInfo:
    if info.name in MODELS:
        raise ValueError(f"model '{info.name}' is registered twice")
    MODELS[info.name] = info
    return info


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model '{cfg.name}'; valid: {', '.join(sorted(MODELS))}")
    return MODELS[cfg.name].build(cfg, tuple(input_shape), num_classes)
