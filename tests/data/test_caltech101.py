"""Caltech101 loader on generated trees and archives in the official layout."""

from __future__ import annotations

import os
import time

import pytest
import torch

from largebatch.config import DataConfig
from largebatch.data import DataError, build_dataset
from largebatch.data import decode_cache as dc
from tests.data.imagegen import CLASSES, PER_CLASS, make_caltech_tree, pack_official


def cfg(root, cache, **kw) -> DataConfig:
    return DataConfig(name="caltech101", root=str(root), image_size=16, cache_dir=str(cache), **kw)


def test_official_zip_counts_shapes_and_split(caltech_zip_root, tmp_path):
    bundle = build_dataset(cfg(caltech_zip_root, tmp_path, augment=True))
    n = len(CLASSES) * PER_CLASS
    assert bundle.num_classes == len(CLASSES)  # background left out
    assert bundle.input_shape == (3, 16, 16)
    assert len(bundle.train) + len(bundle.val) == n
    # Stratified 3:1: two of each class's eight images in validation.
    assert torch.bincount(bundle.val.labels).tolist() == [2] * len(CLASSES)
    assert torch.bincount(bundle.train.labels).tolist() == [6] * len(CLASSES)
    info = bundle.info
    assert info["class_counts"]["anchor"] == {"train": 6, "val": 2}
    assert info["skipped_corrupt"] == 0
    files = info["manifest"]["files"]
    assert len(files) == n and {f["split"] for f in files} == {"train", "val"}
    assert not any("BACKGROUND" in f["path"] for f in files)
    g = torch.Generator().manual_seed(0)
    x, y = bundle.train.get_batch(torch.arange(4), augment=True, generator=g)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (4,)
    xv, _ = bundle.val.get_batch(torch.arange(3))
    assert xv.shape == (3, 3, 16, 16)


def test_sources_agree_and_split_is_seeded(caltech_tree, caltech_zip_root, tmp_path):
    from_zip = build_dataset(cfg(caltech_zip_root, tmp_path))
    from_folder = build_dataset(cfg(caltech_tree.parent, tmp_path))
    again = build_dataset(cfg(caltech_tree.parent, tmp_path))
    other_seed = build_dataset(cfg(caltech_tree.parent, tmp_path, split_seed=1))
    h = from_zip.info["manifest_sha256"]
    assert from_folder.info["manifest_sha256"] == h == again.info["manifest_sha256"]
    assert other_seed.info["manifest_sha256"] != h
    val = [f["path"] for f in from_folder.info["manifest"]["files"] if f["split"] == "val"]
    val_other = [f["path"] for f in other_seed.info["manifest"]["files"] if f["split"] == "val"]
    assert val != val_other and len(val) == len(val_other)
    assert torch.equal(from_zip.val.images, from_folder.val.images)


def test_tarball_source(caltech_tree, tmp_path):
    import tarfile

    root = tmp_path / "src"
    root.mkdir()
    with tarfile.open(root / "101_ObjectCategories.tar.gz", "w:gz") as tf:
        tf.add(caltech_tree, arcname="101_ObjectCategories")
    bundle = build_dataset(cfg(root, tmp_path / "cache"))
    assert len(bundle.train) + len(bundle.val) == len(CLASSES) * PER_CLASS


def test_grayscale_and_cmyk_decode_to_rgb(caltech_tree):
    gray = dc.decode_image(caltech_tree / CLASSES[1] / "image_0003.jpg", 12)
    cmyk = dc.decode_image(caltech_tree / CLASSES[2] / "image_0002.jpg", 12)
    assert gray.shape == cmyk.shape == (12, 12, 3)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_background_kept_with_option(caltech_tree, tmp_path):
    bundle = build_dataset(cfg(caltech_tree.parent, tmp_path, keep_background=True))
    assert bundle.num_classes == len(CLASSES) + 1
    assert "BACKGROUND_Google" in bundle.info["classes"]
    assert len(bundle.train) + len(bundle.val) == len(CLASSES) * PER_CLASS + 3


def test_corrupt_file_named_or_skipped(tmp_path):
    tree = make_caltech_tree(tmp_path / "data", corrupt=True, classes=CLASSES[:2], per_class=4)
    with pytest.raises(DataError, match="image_0099.jpg") as err:
        build_dataset(cfg(tree.parent, tmp_path / "cache"))
    assert "skip_corrupt" in str(err.value)
    bundle = build_dataset(cfg(tree.parent, tmp_path / "cache", skip_corrupt=True))
    assert bundle.info["skipped_corrupt"] == 1
    assert bundle.info["skipped_files"] == [f"{CLASSES[0]}/image_0099.jpg"]
    assert len(bundle.train) + len(bundle.val) == 8
    # A cache built with skipping still refuses the corrupt file when skipping is off.
    with pytest.raises(DataError, match="image_0099.jpg"):
        build_dataset(cfg(tree.parent, tmp_path / "cache"))


def test_decode_cache_reused_and_invalidated(tmp_path):
    tree = make_caltech_tree(tmp_path / "data", classes=CLASSES[:2], per_class=4)
    cache = tmp_path / "cache"
    first = build_dataset(cfg(tree.parent, cache))
    npy = first.info["decode_cache"]
    mtime = os.stat(npy).st_mtime_ns
    decoded = dc.STATS["decoded"]
    second = build_dataset(cfg(tree.parent, cache))
    assert second.info["decode_cache_reused"] and not first.info["decode_cache_reused"]
    assert dc.STATS["decoded"] == decoded  # nothing decoded the second time
    assert second.info["decode_cache"] == npy and os.stat(npy).st_mtime_ns == mtime
    # Changing one source file gives a new key: everything is decoded again.
    changed = tree / CLASSES[0] / "image_0001.jpg"
    changed.write_bytes((tree / CLASSES[1] / "image_0002.jpg").read_bytes())
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = build_dataset(cfg(tree.parent, cache))
    assert not third.info["decode_cache_reused"] and third.info["decode_cache"] != npy
    assert dc.STATS["decoded"] == decoded + 8


def test_decode_with_workers(tmp_path):
    tree = make_caltech_tree(tmp_path / "data", classes=CLASSES[:2], per_class=4)
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.jpg"))
    plain = dc.decode_images(tree, files, 10, cache_dir=tmp_path / "a")
    workers = dc.decode_images(tree, files, 10, cache_dir=tmp_path / "b", num_workers=2)
    assert (plain.images == workers.images).all() and plain.files == workers.files


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LARGEBATCH_DATA", raising=False)
    import pathlib

    monkeypatch.setattr(pathlib.Path, "home", lambda: tmp_path)
    with pytest.raises(DataError, match="largebatch download caltech101") as err:
        build_dataset(cfg(tmp_path / "nothing", tmp_path / "cache"))
    assert str(tmp_path / "nothing") in str(err.value)


def test_zip_with_escaping_tarball_is_refused(tmp_path):
    import io
    import tarfile
    import zipfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = b"gotcha"
        info = tarfile.TarInfo("../evil.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    root = tmp_path / "root"
    root.mkdir()
    with zipfile.ZipFile(root / "caltech-101.zip", "w") as zf:
        zf.writestr("caltech-101/101_ObjectCategories.tar.gz", buf.getvalue())
    with pytest.raises(DataError, match=r"\.\./evil\.txt"):
        build_dataset(cfg(root, tmp_path / "cache"))
    assert not (tmp_path / "cache" / "evil.txt").exists()
    assert not list((tmp_path / "cache").rglob("evil.txt"))


def test_pack_official_layout(caltech_tree, tmp_path):
    import zipfile

    archive = pack_official(caltech_tree, tmp_path)
    assert "caltech-101/101_ObjectCategories.tar.gz" in zipfile.ZipFile(archive).namelist()
