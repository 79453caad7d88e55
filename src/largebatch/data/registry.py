"""The dataset registry: a dict of frozen records, one per dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from largebatch.config import DataConfig
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


DATASETS: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    if info.name in DATASETS:
        raise ValueError(f"dataset '{info.name}' is registered twice")
    DATASETS[info.name] = info
    return info


class DataError(UserError):
    """Dataset files missing or malformed; the message says where they were looked for and how
    to get them."""


def build_dataset(cfg: DataConfig, device: torch.device | str = "cpu") -> DatasetBundle:
    if cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset '{cfg.name}'; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[cfg.name].build(cfg, torch.device(device))
