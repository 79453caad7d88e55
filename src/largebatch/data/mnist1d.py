"""MNIST-1D (Greydanus, 2020), generated locally by the ``mnist1d`` package: no download.

40-sample 1-D signals in 10 classes; by default 5000 examples split 4000/1000. The generator is
deterministic (the package's seed 42), so every run sees the same data. It reads no files:
an explicit ``data.root`` is an error rather than silently ignored.
"""

from __future__ import annotations

import numpy as np
import torch

from largebatch.config import ConfigError, DataConfig
from largebatch.data.base import DatasetBundle, TensorSplit, train_subset_indices
from largebatch.data.registry import DataError, DatasetInfo, register

_CACHE: dict[tuple[int, float], dict] = {}


def generate(num_samples: int = 5000, train_fraction: float = 0.8) -> dict:
    """The raw arrays from ``mnist1d.data.make_dataset`` (memoised within the process)."""
    key = (num_samples, train_fraction)
    if key not in _CACHE:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise DataError("MNIST-1D needs the 'mnist1d' package: pip install mnist1d") from e
        args = get_dataset_args()
        args.num_samples = num_samples
        args.train_split = train_fraction
        _CACHE[key] = make_dataset(args)
    return _CACHE[key]


def build(cfg: DataConfig, device: torch.device) -> DatasetBundle:
    if cfg.root:
        raise ConfigError(
            f"data.root '{cfg.root}' is set, but mnist1d is generated locally and reads no files; "
            "unset data.root (null), or choose a dataset that reads files"
        )
    raw = generate(cfg.num_samples, cfg.train_fraction)
    x = torch.from_numpy(np.asarray(raw["x"], dtype=np.float32))
    y = torch.from_numpy(np.asarray(raw["y"], dtype=np.int64))
    x_val = torch.from_numpy(np.asarray(raw["x_test"], dtype=np.float32))
    y_val = torch.from_numpy(np.asarray(raw["y_test"], dtype=np.int64))
    train = TensorSplit(x, y)
    if cfg.train_subset is not None:
        train = train.subset(train_subset_indices(y, cfg.train_subset, cfg.split_seed))
    return DatasetBundle(
        train=train.to(device),
        val=TensorSplit(x_val, y_val).to(device),
        num_classes=10,
        input_shape=(x.shape[1],),
        info={
            "source": "mnist1d.make_dataset (generated locally)",
            "num_train": len(train),
            "num_val": len(y_val),
        },
    )


register(
    DatasetInfo(
        name="mnist1d",
        description="MNIST-1D: 40-sample 1-D signals, 10 classes, generated locally (4000/1000)",
        build=build,
        needs_files=False,
        input_kind="sequence",
    )
)
