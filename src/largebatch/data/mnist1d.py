"""MNIST-1D (Greydanus, 2020), generated locally by the ``mnist1d`` package: no download.

40-sample 1-D signals in 10 classes; by default 5000 examples split 4000/1000. The generator is
deterministic (the package's seed 42), so every run sees the same data. It reads no data files:
an explicit ``data.root`` is an error rather than silently ignored.

Generating takes seconds (mostly importing the package), so the arrays are cached on disk in
``<data.cache_dir or ~/.cache/largebatch>/mnist1d/<key>.npz``, keyed by the generator's
arguments and the ``mnist1d`` package version, written atomically; a cache file that cannot be
read is regenerated and replaced.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from largebatch.checkpoint import atomic_write_bytes
from largebatch.config import ConfigError, DataConfig
from largebatch.data.base import DatasetBundle, TensorSplit, train_subset_indices
from largebatch.data.decode_cache import default_cache_dir
from largebatch.data.registry import DataError, DatasetInfo, register

_CACHE: dict[tuple[int, float], dict] = {}
ARRAYS = ("x", "y", "x_test", "y_test")
CACHE_FORMAT = 1
STATS = {"generated": 0, "cache_hits": 0}
"""Counters for this process: datasets generated, and disk caches read (the tests read them)."""


def _package_version() -> str:
    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency of the package
        return "unknown"


def cache_path(num_samples: int, train_fraction: float, cache_dir: str | Path | None) -> Path:
    """Where the arrays of these arguments are cached."""
    spec = {
        "format": CACHE_FORMAT,
        "num_samples": num_samples,
        "train_fraction": train_fraction,
        "mnist1d": _package_version(),
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return base / "mnist1d" / f"n{num_samples}-{key}.npz"


def _read_cache(path: Path) -> dict | None:
    """The cached arrays, or None when the file is missing or unreadable (then regenerated)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: np.array(f[k]) for k in ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if len(raw["x"]) != len(raw["y"]) or len(raw["x_test"]) != len(raw["y_test"]):
        return None
    return raw


def _make(num_samples: int, train_fraction: float) -> dict:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise DataError("MNIST-1D needs the 'mnist1d' package: pip install mnist1d") from e
    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = train_fraction
    made = make_dataset(args)
    STATS["generated"] += 1
    return {k: np.asarray(made[k]) for k in ARRAYS}


def generate(
    num_samples: int = 5000, train_fraction: float = 0.8, cache_dir: str | Path | None = None
) -> dict:
    """The arrays ``x, y, x_test, y_test`` of ``mnist1d.data.make_dataset`` (memoised within the
    process, cached on disk across processes; see the module docstring)."""
    key = (num_samples, train_fraction)
    if key in _CACHE:
        return _CACHE[key]
    path = cache_path(num_samples, train_fraction, cache_dir)
    raw = _read_cache(path)
    if raw is not None:
        STATS["cache_hits"] += 1
    else:
        raw = _make(num_samples, train_fraction)
        try:
            atomic_write_bytes(path, lambda f: np.savez(f, **raw))
        except OSError:
            pass  # a read-only cache folder costs time, not correctness
    _CACHE[key] = raw
    return raw


def build(cfg: DataConfig, device: torch.device) -> DatasetBundle:
    if cfg.root:
        raise ConfigError(
            f"data.root '{cfg.root}' is set, but mnist1d is generated locally and reads no files; "
            "unset data.root (null), or choose a dataset that reads files"
        )
    raw = generate(cfg.num_samples, cfg.train_fraction, cfg.cache_dir)
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
            "cache": str(cache_path(cfg.num_samples, cfg.train_fraction, cfg.cache_dir)),
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
