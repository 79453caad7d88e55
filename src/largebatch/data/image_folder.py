"""Image datasets stored as one folder per class, decoded once and held on the device.

Registered as ``image_folder``: ``data.root`` holds either ``train/`` and ``val/``, each with one
subfolder per class, or a single class-per-subfolder tree that is split here, stratified by class
(``data.val_fraction``, ``data.split_seed``), as Caltech101 is. ``data.root`` must exist and be a
folder (it is never replaced by another location).

Decoding (:func:`largebatch.data.decode_cache.to_rgb`), so that every file becomes the 8-bit RGB
image a viewer shows: the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``);
16-bit grayscale PNG/TIFF (PIL modes ``I;16``, ``I;16B``, ``I;16L``, and ``I`` read as 16-bit) is
scaled to 8 bits as ``round(v * 255 / 65535)``, not clipped; images with transparency (``RGBA``,
``LA``, ``PA``, or a palette/grayscale/RGB image with a transparent colour) are alpha-composited on
a white background (as Hugging Face's ``convert_to_rgb`` does); grayscale, CMYK and palette images
are converted by PIL. Images go through the decode cache
(:mod:`largebatch.data.decode_cache`) at ``stored_resolution(image_size)`` (256 for 224) and are
held as a uint8 tensor on the training device; a batch is gathered and augmented there (random
resized crop + flip for training, central crop for validation) and normalised with the ImageNet
mean and std.

Note: the random resized crop draws its box from the stored square (shorter side resized, centre
cropped), not from the original full frame; for Caltech's ~300x200 images that loses the edges of
the long side, a small departure from torchvision's pipeline, bought for a fixed-size cache.

The split is recorded as a manifest (every file with its label and split) and its SHA-256, in the
bundle's ``info`` (``info["manifest"]``, ``info["manifest_sha256"]``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from largebatch.config import DataConfig
from largebatch.data.base import DatasetBundle, train_subset_indices
from largebatch.data.decode_cache import DecodedImages, decode_images
from largebatch.data.locate import explicit_root
from largebatch.data.registry import DataError, DatasetInfo, register
from largebatch.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSplit,
    imagenet_eval_transform,
    imagenet_train_transform,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def stored_resolution(image_size: int) -> int:
    """Side of the decoded square kept in the cache: ``image_size / 0.875`` (256 for 224)."""
    return max(image_size, round(image_size / 0.875))


def list_class_tree(
    folder: Path, exclude: tuple[str, ...] = ()
) -> tuple[list[str], list[str], list[int]]:
    """``(classes, files, labels)`` of a class-per-subfolder tree.

    Classes are the sorted subfolder names (hidden ones and ``exclude`` left out); files are the
    image files under each, as sorted POSIX paths relative to ``folder``.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    classes = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith((".", "__")) and p.name not in exclude
    )
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(
            p.relative_to(folder).as_posix()
            for p in (folder / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(
            f"{folder}: no images found in class subfolders (expected <class>/<image>.jpg, "
            f"extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return classes, files, labels


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask of the validation examples: ``round(n_c * val_fraction)`` of each class
    (at least one left for training), drawn from ``seed``; deterministic."""
    n = len(labels)
    is_val = torch.zeros(n, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        k = min(round(len(idx) * val_fraction), len(idx) - 1)
        perm = torch.randperm(len(idx), generator=g)
        is_val[idx[perm[:k]]] = True
    return is_val


def manifest_sha256(manifest: dict[str, Any]) -> str:
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def to_device_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` array -> contiguous uint8 ``(N, 3, H, W)`` on ``device``."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).to(device)
    return x.permute(0, 3, 1, 2).contiguous()


def _decode(tree: Path, files: list[str], cfg: DataConfig, resolution: int) -> DecodedImages:
    return decode_images(
        tree,
        files,
        resolution,
        cache_dir=cfg.cache_dir,
        num_workers=cfg.num_workers,
        skip_corrupt=cfg.skip_corrupt,
    )


def _split_pair(
    images: torch.Tensor, labels: torch.Tensor, is_val: torch.Tensor, cfg: DataConfig
) -> tuple[ImageSplit, ImageSplit]:
    eval_transform = imagenet_eval_transform(cfg.image_size)
    # Without data.augment the training batches get the validation crop, whatever the caller
    # passes as ``augment``: the shapes always match input_shape.
    train_transform = imagenet_train_transform(cfg.image_size) if cfg.augment else eval_transform

    def make(mask: torch.Tensor) -> ImageSplit:
        idx = torch.nonzero(mask).flatten().to(images.device)
        return ImageSplit(
            images.index_select(0, idx),
            labels[mask],
            IMAGENET_MEAN,
            IMAGENET_STD,
            train_transform,
            eval_transform,
        )

    return make(~is_val), make(is_val)


def _counts(classes: list[str], labels: torch.Tensor, is_val: torch.Tensor) -> dict[str, Any]:
    train = torch.bincount(labels[~is_val], minlength=len(classes)).tolist()
    val = torch.bincount(labels[is_val], minlength=len(classes)).tolist()
    return {c: {"train": t, "val": v} for c, t, v in zip(classes, train, val, strict=True)}


def build_tree_bundle(
    name: str,
    tree: Path,
    cfg: DataConfig,
    device: torch.device,
    exclude: tuple[str, ...] = (),
    extra_info: dict[str, Any] | None = None,
) -> DatasetBundle:
    """Decode a single class tree, split it stratified 1 - val_fraction : val_fraction, and
    return the bundle with its manifest."""
    classes, files, labels_list = list_class_tree(tree, exclude)
    resolution = stored_resolution(cfg.image_size)
    decoded = _decode(tree, files, cfg, resolution)
    label_of = dict(zip(files, labels_list, strict=True))
    labels = torch.tensor([label_of[f] for f in decoded.files], dtype=torch.int64)
    # The split is drawn over the images that decoded, so the manifest lists exactly what is used.
    is_val = stratified_split(labels, cfg.val_fraction, cfg.split_seed)
    manifest = {
        "dataset": name,
        "split": {"val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed},
        "classes": classes,
        "files": [
            {"path": f, "label": int(y), "split": "val" if v else "train"}
            for f, y, v in zip(decoded.files, labels.tolist(), is_val.tolist(), strict=True)
        ],
        "skipped": sorted(decoded.skipped),
    }
    images = to_device_images(decoded.images, device)
    train, val = _split_pair(images, labels, is_val, cfg)
    if cfg.train_subset is not None:
        train = _subset(train, train_subset_indices(train.labels, cfg.train_subset, cfg.split_seed))
    info = {
        "source": str(tree),
        "num_train": len(train),
        "num_val": len(val),
        "num_classes": len(classes),
        "classes": classes,
        "class_counts": _counts(classes, labels, is_val),
        "skipped_corrupt": len(decoded.skipped),
        "skipped_files": sorted(decoded.skipped),
        "stored_resolution": resolution,
        "decode_cache": str(decoded.path),
        "decode_cache_reused": decoded.from_cache,
        "manifest": manifest,
        "manifest_sha256": manifest_sha256(manifest),
        **(extra_info or {}),
    }
    return DatasetBundle(train, val, len(classes), (3, cfg.image_size, cfg.image_size), info)


def _subset(split: ImageSplit, idx: torch.Tensor) -> ImageSplit:
    dev = split.images.device
    return ImageSplit(
        split.images.index_select(0, idx.to(dev)),
        split.y.index_select(0, idx.to(dev)),
        split.mean,
        split.std,
        split.train_transform,
        split.eval_transform,
    )


def build_train_val_bundle(root: Path, cfg: DataConfig, device: torch.device) -> DatasetBundle:
    """``root/train`` and ``root/val`` trees: the given split, classes from ``train``."""
    classes, train_files, train_labels = list_class_tree(root / "train")
    val_classes, val_files, val_labels = list_class_tree(root / "val")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise DataError(f"{root / 'val'}: classes not in {root / 'train'}: {', '.join(unknown)}")
    remap = [classes.index(c) for c in val_classes]
    val_labels = [remap[y] for y in val_labels]
    resolution = stored_resolution(cfg.image_size)
    splits, counts, skipped = [], {}, []
    for part, files, labels_list in (
        ("train", train_files, train_labels),
        ("val", val_files, val_labels),
    ):
        decoded = _decode(root / part, files, cfg, resolution)
        label_of = dict(zip(files, labels_list, strict=True))
        y = torch.tensor([label_of[f] for f in decoded.files], dtype=torch.int64)
        is_val = torch.full((len(y),), part == "val")
        split = _split_pair(to_device_images(decoded.images, device), y, is_val, cfg)
        splits.append(split[1] if part == "val" else split[0])
        counts[part] = torch.bincount(y, minlength=len(classes)).tolist()
        skipped += [f"{part}/{f}" for f in sorted(decoded.skipped)]
    train, val = splits
    if cfg.train_subset is not None:
        train = _subset(train, train_subset_indices(train.labels, cfg.train_subset, cfg.split_seed))
    info = {
        "source": str(root),
        "num_train": len(train),
        "num_val": len(val),
        "num_classes": len(classes),
        "classes": classes,
        "class_counts": {
            c: {"train": counts["train"][i], "val": counts["val"][i]} for i, c in enumerate(classes)
        },
        "skipped_corrupt": len(skipped),
        "skipped_files": skipped,
        "stored_resolution": resolution,
    }
    return DatasetBundle(train, val, len(classes), (3, cfg.image_size, cfg.image_size), info)


def build(cfg: DataConfig, device: torch.device) -> DatasetBundle:
    if not cfg.root:
        raise DataError(
            "image_folder needs data.root: a folder with train/ and val/ class subfolders, or one "
            "class-per-subfolder tree (split by data.val_fraction)"
        )
    root = explicit_root(
        cfg.root, "train/ and val/ class subfolders, or one class-per-subfolder tree of images"
    )
    if (root / "train").is_dir() and (root / "val").is_dir():
        return build_train_val_bundle(root, cfg, device)
    return build_tree_bundle("image_folder", root, cfg, device)


register(
    DatasetInfo(
        name="image_folder",
        description="images in class subfolders under data.root (train/ + val/, or one tree split)",
        build=build,
        needs_files=True,
    )
)
