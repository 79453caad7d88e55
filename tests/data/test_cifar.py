"""CIFAR binary reader on archives written in the official format (a few records per file)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from largebatch.config import DataConfig
from largebatch.data import DataError, build_dataset


def _records(n: int, label_bytes: int, seed: int, classes: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=(n, label_bytes), dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1).tobytes(), pixels


def _write_tar(path, folder: str, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_cifar10(path, per_file: int = 3) -> dict[str, bytes]:
    files = {f"data_batch_{i}.bin": _records(per_file, 1, i, 10)[0] for i in range(1, 6)} | {
        "test_batch.bin": _records(per_file, 1, 9, 10)[0],
        "batches.meta.txt": b"airplane\n",
    }
    _write_tar(path, "cifar-10-batches-bin", files)
    return files


def test_cifar10_from_archive_and_folder(tmp_path):
    files = write_cifar10(tmp_path / "cifar-10-binary.tar.gz")
    bundle = build_dataset(DataConfig(name="cifar10", root=str(tmp_path), augment=True))
    assert len(bundle.train) == 15 and len(bundle.val) == 3 and bundle.num_classes == 10
    assert bundle.input_shape == (3, 32, 32) and not bundle.info["official_counts"]
    # Record layout: label byte, then 1024 R, 1024 G, 1024 B bytes, row-major.
    raw = np.frombuffer(files["data_batch_1.bin"], dtype=np.uint8).reshape(3, 3073)
    assert bundle.train.labels[:3].tolist() == raw[:, 0].tolist()
    assert torch.equal(bundle.train.images[1, 1, 0, :5], torch.from_numpy(raw[1, 1025:1030].copy()))
    x, y = bundle.train.get_batch(torch.arange(4), augment=True, generator=torch.Generator())
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    # The extracted folder reads the same.
    folder = tmp_path / "ex"
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz") as tf:
        tf.extractall(folder, filter="data")
    again = build_dataset(DataConfig(name="cifar10", root=str(folder)))
    assert torch.equal(again.train.images, bundle.train.images)


def test_cifar100_uses_fine_labels(tmp_path):
    train, _ = _records(4, 2, 0, 20)
    test, _ = _records(2, 2, 1, 20)
    _write_tar(
        tmp_path / "cifar-100-binary.tar.gz",
        "cifar-100-binary",
        {"train.bin": train, "test.bin": test},
    )
    bundle = build_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    fine = np.frombuffer(train, dtype=np.uint8).reshape(4, 3074)[:, 1]
    assert bundle.train.labels.tolist() == fine.tolist() and bundle.num_classes == 100
    x, _ = bundle.val.get_batch(torch.arange(2))
    assert x.shape == (2, 3, 32, 32)


def test_truncated_file_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(_records(2, 1, i, 10)[0])
    (folder / "test_batch.bin").write_bytes(_records(2, 1, 7, 10)[0][:-5])
    with pytest.raises(DataError, match="test_batch.bin"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="largebatch download cifar10"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path / "none")))
