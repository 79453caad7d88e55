"""The dataset registry: a dict of frozen records, one per dataset.

The registry owns the dataset names: :func:`check_dataset_name` is the one check of
``data.name`` (the config module does not import the registry, so that no import cycle runs
through it). Call it before anything is built, to fail before a run directory exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from largebatch.config import ConfigError, DataConfig
from largebatch.data.base import DatasetBundle, TensorSplit, stratified_subset
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
    """What one example is: 'sequence' (a 1-D signal, shape ``(L,)``), 'image' (``(C, H, W)``)
    or 'vector' (features that only models taking vectors fit); see
    :func:`largebatch.models.registry.check_model_fits`."""


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
        raise ConfigError(
            f"data.name: '{name}' is not one of: {', '.join(sorted(DATASETS))} (a plugin's name? "
            "install the plugin, or name its module in train.plugins)"
        )
    return DATASETS[name]


def build_dataset(cfg: DataConfig, device: torch.device | str = "cpu") -> DatasetBundle:
    bundle = check_dataset_name(cfg.name).build(cfg, torch.device(device))
    if cfg.val_subset is not None:
        bundle = _val_subset(bundle, cfg)
    return bundle


def _val_subset(bundle: DatasetBundle, cfg: DataConfig) -> DatasetBundle:
    """``data.val_subset``: a stratified subset of the validation split, drawn with
    ``split_seed`` (the same for every run of a comparison)."""
    val = bundle.val
    if not isinstance(val, TensorSplit):
        raise ConfigError(
            f"data.val_subset: {cfg.name} is read from disk batch by batch; the subset is for "
            "datasets held in memory (mnist1d, fashion_mnist, mnist, cifar10, cifar100): remove "
            "the key"
        )
    if cfg.val_subset > len(val):
        raise ConfigError(
            f"data.val_subset={cfg.val_subset} is larger than the validation set ({len(val)} "
            f"examples); use at most {len(val)}, or leave it unset (null)"
        )
    keep = stratified_subset(val.y.cpu(), cfg.val_subset, cfg.split_seed)
    info = {**bundle.info, "num_val": cfg.val_subset, "val_subset_of": len(val)}
    return dataclasses.replace(bundle, val=val.subset(keep), info=info)
