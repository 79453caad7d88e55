"""The dataset registry: a dict of frozen records, one per dataset.

The registry owns the dataset names: :func:`check_dataset_name` is the one check of
``data.name`` (the config module does not import the registry, so that no import cycle runs
through it). Call it before anything is built, to fail before a run directory exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from largebatch.config import ConfigError, DataConfig
from largebatch.data.base import DatasetBundle
from largebatch.errors import UserError

DatasetBuilder = Callable[[DataConfig, torch.device], DatasetBundle]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    """One line: what it is, its size, where it comes from."""
    build: DatasetBuilder
    needs_files: bool
    """True when it reads files (``data.root``); False when it is generated locally."""
    input_kind: str = "image"
    """What one example is: 'sequence' (a 1-D signal, shape ``(L,)``) or 'image'
    (``(C, H, W)``); see :func:`largebatch.models.registry.check_model_fits`."""


DATASETS: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    if info.name in DATASETS:
        raise ValueError(f"dataset '{info.name}' is registered twice")
    DATASETS[info.name] = info
    return info


class DataError(UserError):
    """Dataset files missing or malformed; the message says where they were looked for and how
    to get them."""


def check_dataset_name(name: str) -> DatasetInfo:
    """The registry entry of ``name``; :class:`ConfigError` naming the valid names if none."""
    if name not in DATASETS:
        raise ConfigError(f"data.name: '{name}' is not one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def build_dataset(cfg: DataConfig, device: torch.device | str = "cpu") -> DatasetBundle:
    return check_dataset_name(cfg.name).build(cfg, torch.device(device))
