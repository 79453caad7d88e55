"""Throughput of the image-data pipeline alone, in images per second (no model).

Measures, on a generated tree of Caltech-sized JPEGs (about 300x200 pixels):

1. building the decode cache (PIL decode + RGB + resize + centre crop, written to a .npy),
   with ``--workers`` DataLoader workers;
2. reusing the cache (hash the file list, memory-map, copy to a tensor);
3. ``get_batch`` from the cached uint8 tensor: random resized crop + flip + normalise (training)
   and the central crop + normalise (validation), and CIFAR's pad-crop-flip at 32x32.

torch's intra-op thread count is fixed (``--threads``) and recorded. With ``--append`` the table
is appended to ``benchmarks/RESULTS.md`` under "## Image data pipeline (issue 5)".

    OMP_NUM_THREADS=1 python benchmarks/bench_data.py --threads 1 --append
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from largebatch.config import DataConfig
from largebatch.data import build_dataset
from largebatch.data import transforms as T
from largebatch.rundir import cpu_model as cpu_name

SECTION = "## Image data pipeline (issue 5)"


def make_tree(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """Caltech-like tree: ``classes`` folders of ``per_class`` 300x200 JPEGs with smooth content
    (noise-free gradients plus shapes, so JPEG sizes resemble photographs, not noise)."""
    rng = np.random.default_rng(seed)
    tree = root / "101_ObjectCategories"
    yy, xx = np.mgrid[0:200, 0:300]
    for c in range(classes):
        for i in range(per_class):
            a, b, d = rng.uniform(0.2, 1.0, 3)
            img = np.stack(
                [
                    127 + 100 * np.sin(a * xx / 20 + c),
                    127 + 100 * np.cos(b * yy / 15 + i),
                    127 + 100 * np.sin((xx + yy) * d / 30),
                ],
                axis=-1,
            )
            path = tree / f"class_{c:03d}" / f"image_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return tree


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_folder(tree: Path, size: int, args: argparse.Namespace, cache: Path) -> list[tuple]:
    """Decode-cache build and reuse, and get_batch rates, for one training image size."""
    cfg = DataConfig(
        name="caltech101",
        root=str(tree.parent),
        image_size=size,
        augment=True,
        num_workers=args.workers,
        cache_dir=str(cache),
    )
    n = sum(1 for _ in tree.rglob("*.jpg"))
    t_build = timed(lambda: build_dataset(cfg))
    t_reuse = timed(lambda: build_dataset(cfg), repeats=3)
    bundle = build_dataset(cfg)
    stored = bundle.info["stored_resolution"]
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(bundle.train), generator=g)[: args.batch]
    val_idx = torch.arange(min(args.batch, len(bundle.val)))
    reps = 5
    t_aug = timed(lambda: [bundle.train.get_batch(idx, True, g) for _ in range(reps)], 3)
    t_val = timed(lambda: [bundle.val.get_batch(val_idx) for _ in range(reps)], 3)
    k, kv = len(idx), len(val_idx)
    return [
        (f"decode-cache build, {stored}px stored", f"{n} JPEGs 300x200", n / t_build),
        (f"decode-cache reuse, {stored}px stored", f"{n} images", n / t_reuse),
        (f"get_batch train: crop+flip+normalise to {size}", f"batch {k}", k * reps / t_aug),
        (f"get_batch val: centre crop+normalise to {size}", f"batch {kv}", kv * reps / t_val),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=0, help="decode DataLoader workers")
    parser.add_argument("--classes", type=int, default=10, help="classes in the generated tree")
    parser.add_argument("--per-class", type=int, default=40, help="images per class")
    parser.add_argument("--batch", type=int, default=128, help="batch size for get_batch")
    parser.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = make_tree(tmp / "data", args.classes, args.per_class)
        for size in (224, 32):
            rows += bench_folder(tree, size, args, tmp / f"cache{size}")
        x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
        cifar = T.ImageSplit(
            x, torch.zeros(args.batch), T.CIFAR10_MEAN, T.CIFAR10_STD, T.cifar_train_transform()
        )
        ids = torch.arange(args.batch)
        t = timed(lambda: [cifar.get_batch(ids, True, torch.Generator()) for _ in range(20)], 3)
        rows.append(
            (
                "get_batch train: CIFAR pad-4 crop+flip+normalise",
                f"batch {args.batch}",
                args.batch * 20 / t,
            )
        )

    header = (
        f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {torch.get_num_threads()} torch thread(s) "
        f"of {len(os.sched_getaffinity(0))} available cores, "
        f"decode workers {args.workers}, torch {torch.__version__}, CPU only"
    )
    table = ["| stage | work | images/s |", "| --- | --- | ---: |"]
    table += [f"| {stage} | {work} | {rate:,.0f} |" for stage, work, rate in rows]
    text = "\n".join([header, "", *table])
    print(text)
    if args.append:
        path = Path(__file__).resolve().parent / "RESULTS.md"
        old = path.read_text() if path.exists() else "# Benchmark results\n"
        if SECTION not in old:
            old = (
                old.rstrip("\n")
                + f"\n\n{SECTION}\n\n"
                + (
                    "`python benchmarks/bench_data.py`: the image pipeline alone (no model), on "
                    "a generated tree of 300x200 JPEGs. 'build' decodes every file once; 'reuse' "
                    "is a later run finding the cache; get_batch works on the cached uint8 "
                    "tensor.\n"
                )
            )
            path.write_text(old + "\n" + text + "\n")
        else:
            # Append inside our section: right before the next '## ' heading, or at the end.
            head, rest = old.split(SECTION, 1)
            nxt = rest.find("\n## ")
            if nxt < 0:
                path.write_text(old.rstrip("\n") + "\n\n" + text + "\n")
            else:
                path.write_text(
                    head + SECTION + rest[:nxt].rstrip("\n") + "\n\n" + text + "\n" + rest[nxt:]
                )


if __name__ == "__main__":
    main()
