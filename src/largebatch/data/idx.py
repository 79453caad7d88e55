"""Fashion-MNIST and MNIST from their official IDX files (plain or gzipped).

Where the files are looked for: an explicit ``data.root`` (the folder or its ``<name>/``
subfolder) and nowhere else; when ``data.root`` is unset, in order, the environment variable
``LARGEBATCH_DATA`` (``$LARGEBATCH_DATA/<name>``); for Fashion-MNIST the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); ``~/.cache/largebatch/<name>``
(where ``largebatch download <name>`` puts them); see :mod:`largebatch.data.locate`. Magic
numbers, dimensions and counts are checked.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from largebatch.config import DataConfig
from largebatch.data.base import DatasetBundle, TensorSplit, train_subset_indices
from largebatch.data.locate import not_in_root, search_dirs
from largebatch.data.registry import DataError, DatasetInfo, register

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
COUNTS = {"train": 60000, "val": 10000}
SYSTEM_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"], "mnist": []}
# Per-channel statistics of the training images, for normalisation.
STATS = {"fashion_mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}
HOW_TO_GET = {
    "fashion_mnist": (
        "install the Debian package (apt-get install dataset-fashion-mnist), or run "
        "'largebatch download fashion_mnist' on a machine with a network, or set data.root"
    ),
    "mnist": "run 'largebatch download mnist' on a machine with a network, or set data.root",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array, checking the header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e}); delete it and fetch it again") from None
    if len(data) < 8:
        raise DataError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(
            f"{path}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
            "(expected 0x00000801 for labels or 0x00000803 for images); is it an IDX file?"
        )
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(
            f"{path}: header says {dims} ({expected} bytes) but the file holds "
            f"{len(data) - offset} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


EXPECTED = f"the IDX files ({', '.join(FILES.values())}, optionally .gz)"


def candidate_dirs(name: str, root: str | None) -> list[Path]:
    return search_dirs(name, root, SYSTEM_DIRS.get(name, []), EXPECTED, HOW_TO_GET[name])


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_files(name: str, root: str | None) -> dict[str, Path]:
    """The four IDX files of ``name`` from the first directory that has them all."""
    looked = []
    partial = ""
    for directory in candidate_dirs(name, root):
        looked.append(str(directory))
        found = {key: _find(directory, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if any(found.values()) and not partial:
            missing = [FILES[key] for key, path in found.items() if path is None]
            partial = f"{directory} has some of them but is missing {', '.join(missing)}."
    if root:
        raise not_in_root(root, name, EXPECTED, HOW_TO_GET[name], partial)
    raise DataError(
        f"{name}: IDX files ({', '.join(FILES.values())}, optionally .gz) not found in "
        f"{', '.join(looked)}. To get them: {HOW_TO_GET[name]}."
    )


def load_arrays(name: str, root: str | None) -> dict[str, np.ndarray]:
    files = find_files(name, root)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "val"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(
                f"{files[f'{split}_images']}: expected 28x28 images, got {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{name} {split}: {len(images)} images but {len(labels)} labels "
                f"({files[f'{split}_images']}, {files[f'{split}_labels']})"
            )
        if labels.max(initial=0) > 9:
            raise DataError(f"{files[f'{split}_labels']}: labels outside 0..9")
    arrays["source"] = np.array(str(files["train_images"].parent))
    return arrays


def _to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return (x - mean) / std


def build_idx(name: str, cfg: DataConfig, device: torch.device) -> DatasetBundle:
    arrays = load_arrays(name, cfg.root)
    mean, std = STATS[name]
    y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    train = TensorSplit(_to_tensor(arrays["train_images"], mean, std), y)
    if cfg.train_subset is not None:
        train = train.subset(train_subset_indices(y, cfg.train_subset, cfg.split_seed))
    val = TensorSplit(
        _to_tensor(arrays["val_images"], mean, std),
        torch.from_numpy(arrays["val_labels"].astype(np.int64)),
    )
    full = {"train": len(arrays["train_labels"]), "val": len(arrays["val_labels"])}
    return DatasetBundle(
        train=train.to(device),
        val=val.to(device),
        num_classes=10,
        input_shape=(1, 28, 28),
        info={
            "source": str(arrays["source"]),
            "num_train": len(train),
            "num_val": len(val),
            "official_counts": full == COUNTS,
        },
    )


register(
    DatasetInfo(
        name="fashion_mnist",
        description="Fashion-MNIST: 28x28 grayscale clothing, 10 classes, 60k/10k (IDX files)",
        build=lambda cfg, device: build_idx("fashion_mnist", cfg, device),
        needs_files=True,
    )
)
register(
    DatasetInfo(
        name="mnist",
        description="MNIST: 28x28 grayscale digits, 10 classes, 60k/10k (IDX files)",
        build=lambda cfg, device: build_idx("mnist", cfg, device),
        needs_files=True,
    )
)
