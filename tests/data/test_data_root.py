"""An explicit data.root is used or is an error; only an unset one searches the defaults."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from largebatch.config import ConfigError, DataConfig
from largebatch.data import DataError, build_dataset
from tests.data.imagegen import make_caltech_tree
from tests.data.test_cifar import write_cifar10

IDX_FILES = ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(folder: Path, n_train: int = 30, n_val: int = 10, seed: int = 0) -> Path:
    """Tiny but valid Fashion-MNIST IDX files (gzipped) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 8, 1, n) + labels.tobytes())
    return folder


@pytest.fixture
def defaults_hold_data(tmp_path, monkeypatch):
    """Every default location holds a copy of each dataset: a wrong fallback would find it."""
    env = tmp_path / "env"
    write_idx(env / "fashion_mnist")
    write_idx(env / "mnist")
    (env / "cifar10").mkdir()
    write_cifar10(env / "cifar10" / "cifar-10-binary.tar.gz")
    make_caltech_tree(env / "caltech101")
    monkeypatch.setenv("LARGEBATCH_DATA", str(env))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return env


def build(name: str, root, **kw):
    return build_dataset(DataConfig(name=name, root=None if root is None else str(root), **kw))


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "caltech101"])
def test_an_empty_explicit_root_is_an_error_naming_it_and_the_files(
    name, tmp_path, defaults_hold_data
):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        build(name, empty)
    message = str(err.value)
    assert f"data.root '{empty}'" in message
    expected = {
        "fashion_mnist": "train-images-idx3-ubyte",
        "mnist": "train-images-idx3-ubyte",
        "cifar10": "cifar-10-binary.tar.gz",
        "caltech101": "101_ObjectCategories",
    }[name]
    assert expected in message
    assert str(defaults_hold_data) not in message  # the defaults were not searched


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "caltech101", "image_folder"])
def test_a_missing_or_file_root_is_an_error(name, tmp_path, defaults_hold_data):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"data.root '{missing}' does not exist"):
        build(name, missing)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match=f"data.root '{a_file}' is a file, not a folder"):
        build(name, a_file)


def test_an_explicit_root_is_used(tmp_path, defaults_hold_data):
    mine = write_idx(tmp_path / "mine", n_train=20, seed=1)
    bundle = build("fashion_mnist", mine)
    assert bundle.info["source"] == str(mine)
    assert len(bundle.train) == 20
    nested = write_idx(tmp_path / "parent" / "fashion_mnist", n_train=40, seed=2)
    assert build("fashion_mnist", tmp_path / "parent").info["source"] == str(nested)


def test_an_unset_root_searches_the_defaults(defaults_hold_data):
    bundle = build("fashion_mnist", None)
    assert bundle.info["source"] == str(defaults_hold_data / "fashion_mnist")
    assert len(build("cifar10", None).train) == 15


def test_partial_files_in_an_explicit_root_name_what_is_missing(tmp_path, defaults_hold_data):
    folder = write_idx(tmp_path / "partial")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        build("fashion_mnist", folder)
    assert "missing t10k-labels-idx1-ubyte" in str(err.value)


def test_mnist1d_refuses_a_root_it_would_ignore(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        build("mnist1d", tmp_path, num_samples=200)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_train_subset_larger_than_the_training_set(name, defaults_hold_data):
    n = {"fashion_mnist": 30, "cifar10": 15}[name]
    with pytest.raises(ConfigError) as err:
        build(name, None, train_subset=n + 1)
    assert str(err.value).startswith(f"data.train_subset={n + 1} is larger than the training set")
    assert f"({n} examples)" in str(err.value)
    assert len(build(name, None, train_subset=n).train) == n
    assert len(build(name, None, train_subset=n - 5).train) == n - 5


def test_train_subset_larger_than_mnist1d():
    with pytest.raises(ConfigError, match=r"data.train_subset=161 .*\(160 examples\)"):
        build("mnist1d", None, num_samples=200, train_subset=161)
