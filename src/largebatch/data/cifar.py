"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official binary archives.

Binary format (https://www.cs.toronto.edu/~kriz/cifar.html): fixed-size records, each the label
byte(s) then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32x32).

- CIFAR-10, ``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``: ``data_batch_1.bin`` ..
  ``data_batch_5.bin`` (10000 records each) and ``test_batch.bin``; 1 label byte.
- CIFAR-100, ``cifar-100-binary.tar.gz`` -> ``cifar-100-binary/``: ``train.bin`` (50000),
  ``test.bin`` (10000); 2 label bytes, coarse then fine: the fine label (100 classes) is used.

Read from the archive itself (only the named members, nothing extracted) or from the extracted
folder, looked for in ``data.root`` and ``data.root/<name>`` only when ``data.root`` is set (an
error if they are not there), else in ``$LARGEBATCH_DATA/<name>``, ``$LARGEBATCH_DATA`` and
``~/.cache/largebatch/<name>`` (see :mod:`largebatch.data.locate`). Sizes and label ranges are
checked. The images are held as uint8 on the device; ``augment`` is the pad-4 random crop plus
flip; batches are normalised with the dataset's mean and std. The official test set is the
validation split.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from largebatch.config import DataConfig
from largebatch.data.base import DatasetBundle, train_subset_indices
from largebatch.data.locate import not_in_root, search_dirs
from largebatch.data.registry import DataError, DatasetInfo, register
from largebatch.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    ImageSplit,
    cifar_train_transform,
)

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarFormat:
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    counts: tuple[int, int] = (50000, 10000)


FORMATS = {
    "cifar10": CifarFormat(
        "cifar-10-binary.tar.gz",
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        1,
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": CifarFormat(
        "cifar-100-binary.tar.gz",
        "cifar-100-binary",
        ("train.bin",),
        ("test.bin",),
        2,
        100,
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}


def parse_records(data: bytes, fmt: CifarFormat, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of one .bin file -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    record = fmt.label_bytes + PIXELS
    if len(data) == 0 or len(data) % record:
        raise DataError(
            f"{where}: {len(data)} bytes is not a whole number of {record}-byte records; "
            "the file is truncated or not the binary version of the dataset"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, fmt.label_bytes - 1].astype(np.int64)  # the last label byte: fine label
    if labels.max() >= fmt.num_classes:
        raise DataError(f"{where}: label {labels.max()} outside 0..{fmt.num_classes - 1}")
    images = rows[:, fmt.label_bytes :].reshape(-1, 3, 32, 32)
    return images, labels


def expected_files(name: str) -> str:
    fmt = FORMATS[name]
    return f"{fmt.archive} or {fmt.folder}/ ({', '.join(fmt.train_files + fmt.test_files)})"


def how_to_get(name: str) -> str:
    return f"run 'largebatch download {name}' on a machine with a network"


def candidate_dirs(name: str, root: str | None) -> list[Path]:
    return search_dirs(name, root, (), expected_files(name), how_to_get(name))


def _read_folder(folder: Path, fmt: CifarFormat) -> dict[str, list[bytes]]:
    out = {}
    for split, names in (("train", fmt.train_files), ("val", fmt.test_files)):
        out[split] = [(folder / n).read_bytes() for n in names]
    return out


def _read_archive(archive: Path, fmt: CifarFormat) -> dict[str, list[bytes]]:
    try:
        with tarfile.open(archive) as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            out = {}
            for split, names in (("train", fmt.train_files), ("val", fmt.test_files)):
                blobs = []
                for n in names:
                    member = members.get(f"{fmt.folder}/{n}")
                    if member is None:
                        raise DataError(
                            f"{archive}: member {fmt.folder}/{n} missing; "
                            f"is it the official {fmt.archive}?"
                        )
                    blobs.append(tf.extractfile(member).read())  # type: ignore[union-attr]
                out[split] = blobs
            return out
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: corrupt archive ({e}); delete it and fetch it again") from None


def load_raw(name: str, root: str | None) -> tuple[dict[str, list[bytes]], Path]:
    """The raw .bin contents per split, from the first folder or archive found."""
    fmt = FORMATS[name]
    looked = []
    for d in candidate_dirs(name, root):
        for folder in (d / fmt.folder, d):
            looked.append(str(folder))
            if all((folder / n).is_file() for n in fmt.train_files + fmt.test_files):
                return _read_folder(folder, fmt), folder
        if (d / fmt.archive).is_file():
            return _read_archive(d / fmt.archive, fmt), d / fmt.archive
    if root:
        raise not_in_root(root, name, expected_files(name), how_to_get(name))
    raise DataError(
        f"{name}: neither {fmt.archive} nor {fmt.folder}/ ({', '.join(fmt.train_files)}, "
        f"{', '.join(fmt.test_files)}) found in {', '.join(looked)}. To get it: run "
        f"'largebatch download {name}' on a machine with a network, or set data.root"
    )


def build_cifar(name: str, cfg: DataConfig, device: torch.device) -> DatasetBundle:
    fmt = FORMATS[name]
    raw, source = load_raw(name, cfg.root)
    arrays = {}
    for split, blobs in raw.items():
        parts = [
            parse_records(b, fmt, f"{source} ({n})")
            for b, n in zip(
                blobs, fmt.train_files if split == "train" else fmt.test_files, strict=True
            )
        ]
        arrays[split] = (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )
    counts = (len(arrays["train"][1]), len(arrays["val"][1]))
    train_transform = cifar_train_transform() if cfg.augment else None

    def split(key: str, transform) -> ImageSplit:
        images, labels = arrays[key]
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        return ImageSplit(x, torch.from_numpy(labels), fmt.mean, fmt.std, transform, None)

    train = split("train", train_transform)
    if cfg.train_subset is not None:
        idx = train_subset_indices(train.labels, cfg.train_subset, cfg.split_seed).to(device)
        train = ImageSplit(
            train.images.index_select(0, idx),
            train.y.index_select(0, idx),
            fmt.mean,
            fmt.std,
            train_transform,
            None,
        )
    val = split("val", None)
    return DatasetBundle(
        train=train,
        val=val,
        num_classes=fmt.num_classes,
        input_shape=(3, 32, 32),
        info={
            "source": str(source),
            "num_train": len(train),
            "num_val": len(val),
            "official_counts": counts == fmt.counts,
        },
    )


register(
    DatasetInfo(
        name="cifar10",
        description="CIFAR-10: 32x32 RGB, 10 classes, 50k/10k (official binary archive)",
        build=lambda cfg, device: build_cifar("cifar10", cfg, device),
        needs_files=True,
    )
)
register(
    DatasetInfo(
        name="cifar100",
        description="CIFAR-100: 32x32 RGB, 100 fine classes, 50k/10k (official binary archive)",
        build=lambda cfg, device: build_cifar("cifar100", cfg, device),
        needs_files=True,
    )
)
