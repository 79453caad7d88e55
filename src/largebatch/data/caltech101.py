"""Caltech101 (Fei-Fei, Fergus and Perona, 2004): the paper's dataset.

101 object classes (plus ``BACKGROUND_Google``, left out unless ``data.keep_background``), 40 to
800 images each, roughly 300x200 pixels, some grayscale and some CMYK. There is no official
split: the paper splits 3:1 into training and validation, which is done here stratified by class
(``data.val_fraction = 0.25``, ``data.split_seed``) and recorded as a manifest in the bundle's
``info`` (see :mod:`largebatch.data.image_folder`).

What is read, looked for in ``data.root`` and ``data.root/caltech101`` only when ``data.root`` is
set (an error if none is there), else in ``$LARGEBATCH_DATA/caltech101``, ``$LARGEBATCH_DATA`` and
``~/.cache/largebatch/caltech101`` (where ``largebatch download caltech101`` puts it):

- the extracted ``101_ObjectCategories/`` folder (also under ``caltech-101/``);
- ``101_ObjectCategories.tar.gz`` (also under ``caltech-101/``);
- the official ``caltech-101.zip`` from CaltechDATA, which holds that tar.gz.

Archives are unpacked once (safely) into ``<cache_dir>/extracted/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from largebatch.config import DataConfig
from largebatch.data.base import DatasetBundle
from largebatch.data.decode_cache import default_cache_dir
from largebatch.data.download import check_member_path, safe_extract
from largebatch.data.image_folder import build_tree_bundle
from largebatch.data.locate import not_in_root, search_dirs
from largebatch.data.registry import DataError, DatasetInfo, register

TREE = "101_ObjectCategories"
TARBALL = "101_ObjectCategories.tar.gz"
ZIPFILE = "caltech-101.zip"
BACKGROUND = "BACKGROUND_Google"
OFFICIAL_CLASSES = 101


EXPECTED = f"{TREE}/, {TARBALL} or {ZIPFILE} (also under caltech-101/)"
HOW_TO_GET = (
    "run 'largebatch download caltech101' on a machine with a network, or download "
    "caltech-101.zip from https://data.caltech.edu/records/mzrjq-6wc02"
)


def candidate_dirs(root: str | None) -> list[Path]:
    return search_dirs("caltech101", root, (), EXPECTED, HOW_TO_GET)


def find_source(root: str | None) -> Path:
    """The first folder tree, tarball or zip found, in that order of preference per folder."""
    looked = []
    for d in candidate_dirs(root):
        if d.name == TREE and d.is_dir():
            return d
        for sub in (d, d / "caltech-101"):
            looked.append(str(sub))
            for candidate in (sub / TREE, sub / TARBALL, sub / ZIPFILE):
                if candidate.exists():
                    return candidate
    if root:
        raise not_in_root(root, "caltech101", EXPECTED, HOW_TO_GET)
    raise DataError(
        f"caltech101: none of {TREE}/, {TARBALL} or {ZIPFILE} found in {', '.join(looked)}. "
        "To get it: run 'largebatch download caltech101' on a machine with a network (it puts "
        "it in ~/.cache/largebatch/caltech101), or download caltech-101.zip from "
        "https://data.caltech.edu/records/mzrjq-6wc02 and set data.root to its folder"
    )


def _extract_tarball_from_zip(archive: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [
                m for m in zf.namelist() if m.endswith(TARBALL) and "__MACOSX" not in m.split("/")
            ]
            if not members:
                raise DataError(
                    f"{archive}: holds no {TARBALL}; is it the official caltech-101.zip?"
                )
            check_member_path(members[0], archive)
            out = dest / TARBALL
            with zf.open(members[0]) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, length=1 << 20)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: corrupt zip ({e}); delete it and fetch it again") from None
    return out


def extracted_tree(source: Path, cache_dir: str | None) -> Path:
    """The ``101_ObjectCategories`` folder for ``source``, unpacking an archive once if needed."""
    if source.is_dir():
        return source
    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    base = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "extracted"
    final = base / f"caltech101-{key.hexdigest()[:16]}"
    if (final / TREE).is_dir():
        return final / TREE
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".caltech101-", dir=base))
    try:
        tarball = source
        if source.name.endswith(".zip"):
            tarball = _extract_tarball_from_zip(source, tmp)
        safe_extract(tarball, tmp)
        if tarball != source:
            tarball.unlink()
        if not (tmp / TREE).is_dir():
            raise DataError(f"{source}: unpacked, but it holds no {TREE}/ folder")
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: use theirs
            if not (final / TREE).is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / TREE


def build(cfg: DataConfig, device: torch.device) -> DatasetBundle:
    source = find_source(cfg.root)
    tree = extracted_tree(source, cfg.cache_dir)
    exclude = () if cfg.keep_background else (BACKGROUND,)
    bundle = build_tree_bundle(
        "caltech101",
        tree,
        cfg,
        device,
        exclude=exclude,
        extra_info={"archive": str(source), "keep_background": cfg.keep_background},
    )
    expected = OFFICIAL_CLASSES + (1 if cfg.keep_background else 0)
    bundle.info["official_classes"] = bundle.num_classes == expected
    return bundle


register(
    DatasetInfo(
        name="caltech101",
        description="Caltech101: ~8.7k RGB images, 101 classes (+background), stratified 3:1 split",
        build=build,
        needs_files=True,
    )
)
