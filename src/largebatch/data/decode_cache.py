"""Decode a list of image files once and keep them as one memory-mappable uint8 array.

Decoding JPEGs is the slow part of an image pipeline, and a small dataset (Caltech101: ~9k
images) fits in memory once decoded at a fixed resolution. :func:`decode_images` decodes every
file with PIL into 8-bit RGB as :func:`open_rgb` says (EXIF orientation applied, 16-bit
grayscale scaled, transparency composited on white, grayscale and CMYK converted), resizes its
shorter side to ``resolution`` and takes the central square, and stores the result in
``cache_dir`` as

- ``<key>.npy``: uint8 ``(N, resolution, resolution, 3)``, one row per listed file;
- ``<key>.json``: the index (files in row order, files skipped as unreadable with their errors).

``key`` hashes the sorted file list with each file's size and modification time, and the
resolution: a source that changes gets a new cache, and the same source is decoded once for all
epochs and runs. Both files are written to temporary names and renamed (the index last), so a
crash never leaves a cache that looks complete. Decoding runs in a ``DataLoader`` with
``num_workers`` processes.

Example::

    cached = decode_images(root, ["cat/1.jpg", "dog/7.jpg"], resolution=256)
    cached.images.shape  # (2, 256, 256, 3), a read-only memory map
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from largebatch.data.registry import DataError

FORMAT_VERSION = 2
"""Bumped when what is stored changes (resampling, layout, decoding), so old caches are not
reused. 2: EXIF orientation, 16-bit scaling and alpha compositing (:func:`open_rgb`)."""

BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited on: white, as image libraries and model
preprocessors (e.g. Hugging Face's ``convert_to_rgb``) do, and as a viewer shows them."""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of 16-bit grayscale (``I``: 32-bit integers, which is how PIL may hold them)."""

STATS = {"decoded": 0, "cache_hits": 0}
"""Counters for this process: images decoded, and caches reused (the tests read them)."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "largebatch"


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened PIL image as 8-bit RGB, as it is meant to be seen.

    In order:

    1. EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a photo stored sideways
       with an orientation tag comes out upright, as viewers and torchvision users see it.
    2. 16-bit grayscale (modes ``I;16``, ``I;16B``, ``I;16L``; and ``I``, read as 16-bit values
       clipped to ``[0, 65535]``), from PNG or TIFF, is scaled to 8 bits,
       ``round(v * 255 / 65535)`` (PIL's own conversion clips, turning it white).
    3. Transparency (modes ``RGBA``, ``LA``, ``PA``, or a ``P``/``L``/``RGB`` image with a
       transparent colour) is composited on :data:`BACKGROUND`, white, so the colour stored
       under transparent pixels is never shown.
    4. Anything else (``L``, ``CMYK``, ``P``, ``1``, ...) goes through PIL's ``convert("RGB")``.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64).clip(0, 65535)
        img = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if has_alpha or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Read one image file fully and return it as 8-bit RGB (see :func:`to_rgb`).

    Raises whatever PIL raises on an unreadable or truncated file (the caller names the file).
    """
    with Image.open(path) as img:
        img.load()  # the full decode: truncated files fail here
        return to_rgb(img)


def decode_image(path: str | Path, resolution: int) -> np.ndarray:
    """One image file -> uint8 ``(resolution, resolution, 3)``: RGB as :func:`open_rgb` makes
    it, shorter side resized to ``resolution`` (bilinear), the central square.

    Raises whatever PIL raises on an unreadable file (the caller names the file).
    """
    img = open_rgb(path)
    width, height = img.size
    s = resolution / min(width, height)
    new = (max(resolution, round(width * s)), max(resolution, round(height * s)))
    if new != (width, height):
        img = img.resize(new, Image.BILINEAR)
    left, top = (new[0] - resolution) // 2, (new[1] - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return np.asarray(img, dtype=np.uint8)


class _DecodeDataset(torch.utils.data.Dataset):
    """Yields ``(row, image or None, error text)``: errors are reported, not raised, so one bad
    file does not kill a worker and every failure can be named."""

    def __init__(self, root: Path, files: list[str], resolution: int) -> None:
        self.root, self.files, self.resolution = root, files, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, decode_image(self.root / self.files[i], self.resolution), ""
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            return i, None, f"{type(e).__name__}: {e}"


def _collate(batch):
    return batch


def source_key(root: Path, files: list[str], resolution: int) -> str:
    """Hash of (sorted files with size and mtime, resolution, format version)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "resolution": resolution}).encode())
    for rel in sorted(files):
        try:
            st = (root / rel).stat()
        except OSError as e:
            raise DataError(f"{root / rel}: cannot be read ({e})") from None
        h.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


@dataclass
class DecodedImages:
    """The decoded images of ``files`` (only the readable ones, in the order given)."""

    images: np.ndarray
    """uint8 ``(N, resolution, resolution, 3)`` (a memory map of the cache file)."""
    files: list[str]
    """The files that decoded, in row order of ``images``."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Unreadable files (relative path -> error), left out with ``skip_corrupt``."""
    key: str = ""
    from_cache: bool = False
    path: Path | None = None


def _atomic_write_bytes(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _decode_all(
    root: Path, files: list[str], resolution: int, num_workers: int, out: np.ndarray
) -> dict[str, str]:
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(root, files, resolution),
        batch_size=32,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    errors: dict[str, str] = {}
    for batch in loader:
        for i, image, error in batch:
            if image is None:
                errors[files[i]] = error
            else:
                out[i] = image
                STATS["decoded"] += 1
    return errors


def _corrupt_error(root: Path, errors: dict[str, str]) -> DataError:
    listed = "; ".join(f"{root / f} ({e})" for f, e in list(errors.items())[:5])
    more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
    return DataError(
        f"{len(errors)} unreadable image(s): {listed}{more}. Delete or replace them, or set "
        "data.skip_corrupt=true to skip (and count) them"
    )


def decode_images(
    root: str | Path,
    files: list[str],
    resolution: int,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    skip_corrupt: bool = False,
) -> DecodedImages:
    """Decode ``files`` (paths relative to ``root``) at ``resolution``, through the cache.

    An unreadable file raises :class:`DataError` naming it, unless ``skip_corrupt`` is set: then
    it is left out and listed in ``skipped``. The rows of the result follow ``files``' order.
    """
    root = Path(root)
    if not files:
        raise DataError(f"{root}: no image files found")
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = folder / "decode"
    folder.mkdir(parents=True, exist_ok=True)
    key = source_key(root, files, resolution)
    npy, index_path = folder / f"{key}.npy", folder / f"{key}.json"

    index = None
    if index_path.is_file() and npy.is_file():
        try:
            index = json.loads(index_path.read_text())
            if index.get("files") != sorted(files) or index.get("resolution") != resolution:
                index = None
        except (OSError, json.JSONDecodeError):
            index = None
    from_cache = index is not None
    if index is None:
        ordered = sorted(files)
        # Decode straight into a memory map: the full array never has to fit in memory twice.
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npy.tmp", dir=folder)
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(ordered), resolution, resolution, 3)
            )
            errors = _decode_all(root, ordered, resolution, num_workers, out)
            if errors and not skip_corrupt:
                raise _corrupt_error(root, errors)
            out.flush()
            del out
            os.replace(tmp, npy)
        finally:
            Path(tmp).unlink(missing_ok=True)
        index = {
            "version": FORMAT_VERSION,
            "resolution": resolution,
            "root": str(root),
            "files": ordered,
            "skipped": errors,
        }
        text = json.dumps(index, indent=1).encode()
        _atomic_write_bytes(index_path, lambda f: f.write(text))
    else:
        STATS["cache_hits"] += 1
        if index["skipped"] and not skip_corrupt:
            raise _corrupt_error(root, index["skipped"])

    images = np.load(npy, mmap_mode="r")
    row_of = {f: i for i, f in enumerate(index["files"])}
    skipped = dict(index["skipped"])
    kept = [f for f in files if f not in skipped]
    rows = np.array([row_of[f] for f in kept], dtype=np.int64)
    if len(rows) != len(images) or not np.array_equal(rows, np.arange(len(rows))):
        images = images[rows]  # a copy in the caller's order, without the skipped rows
    return DecodedImages(images, kept, skipped, key, from_cache, npy)
