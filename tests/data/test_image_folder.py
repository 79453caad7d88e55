"""The generic image_folder dataset: a train/ + val/ layout, or a single tree split here."""

from __future__ import annotations

import pytest
import torch

from largebatch.config import DataConfig
from largebatch.data import DataError, build_dataset
from tests.data.imagegen import write_jpeg


def test_train_val_layout(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for part, n in (("train", 5), ("val", 2)):
        for c in ("cat", "dog", "eel"):
            for i in range(n):
                write_jpeg(tmp_path / "d" / part / c / f"{i}.png", rng)
    write_jpeg(tmp_path / "d" / "val" / "cat" / "extra.jpeg", rng)
    cfg = DataConfig(
        name="image_folder", root=str(tmp_path / "d"), image_size=12, cache_dir=str(tmp_path / "c")
    )
    bundle = build_dataset(cfg)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (15, 7, 3)
    assert torch.bincount(bundle.val.labels).tolist() == [3, 2, 2]
    x, _ = bundle.val.get_batch(torch.arange(7))
    assert x.shape == (7, 3, 12, 12)


def test_single_tree_is_split(caltech_tree, tmp_path):
    cfg = DataConfig(
        name="image_folder",
        root=str(caltech_tree),
        image_size=12,
        cache_dir=str(tmp_path),
        val_fraction=0.5,
    )
    bundle = build_dataset(cfg)
    assert bundle.num_classes == 6  # the generic loader keeps every folder
    assert len(bundle.val) == 4 * 5 + 2  # half of each class; round(1.5) = 2 of 3 background
    assert bundle.info["manifest_sha256"]


def test_needs_root_and_unknown_val_classes(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        build_dataset(DataConfig(name="image_folder"))
    import numpy as np

    rng = np.random.default_rng(0)
    write_jpeg(tmp_path / "train" / "a" / "0.jpg", rng)
    write_jpeg(tmp_path / "val" / "b" / "0.jpg", rng)
    with pytest.raises(DataError, match="classes not in"):
        build_dataset(
            DataConfig(name="image_folder", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
        )
