"""Small image trees and archives in the official Caltech101 layout, made on the fly."""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("accordion", "airplanes", "anchor", "ant", "barrel")
PER_CLASS = 8


def write_jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB", size=(24, 20)) -> None:
    """A small JPEG of ``size`` (width, height) whose colour depends on its class folder."""
    w, h = size
    base = zlib.crc32(path.parent.name.encode()) % 200 + rng.integers(0, 40)
    pixels = (base + rng.integers(0, 30, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)


def make_caltech_tree(
    root: Path, corrupt: bool = False, classes=CLASSES, per_class: int = PER_CLASS, seed: int = 0
) -> Path:
    """``root/101_ObjectCategories`` with ``classes`` x ``per_class`` JPEGs of 24x20 pixels,
    one grayscale and one CMYK image, 3 background images, and optionally one corrupt file."""
    rng = np.random.default_rng(seed)
    tree = root / "101_ObjectCategories"
    for c in classes:
        for i in range(1, per_class + 1):
            write_jpeg(tree / c / f"image_{i:04d}.jpg", rng)
    # Overwrite two images with the other modes found in the real set.
    write_jpeg(tree / classes[1 % len(classes)] / "image_0003.jpg", rng, mode="L")
    write_jpeg(tree / classes[2 % len(classes)] / "image_0002.jpg", rng, mode="CMYK")
    for i in range(1, 4):
        write_jpeg(tree / "BACKGROUND_Google" / f"image_{i:04d}.jpg", rng, size=(30, 18))
    if corrupt:
        (tree / classes[0] / "image_0099.jpg").write_bytes(rng.bytes(300))
    return tree


def pack_official(tree: Path, dest: Path) -> Path:
    """``dest/caltech-101.zip`` holding ``caltech-101/101_ObjectCategories.tar.gz`` (official)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tree, arcname="101_ObjectCategories")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "caltech-101.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("caltech-101/101_ObjectCategories.tar.gz", buf.getvalue())
        zf.writestr("caltech-101/show_annotation.m", "% not used\n")
    return archive
