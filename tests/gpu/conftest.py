"""The GPU tier: tests that run only where CUDA exists (skipped elsewhere, e.g. in CI).

Every module here marks its tests ``gpu`` and skips them without CUDA (:data:`GPU`). To check the
tests themselves on a machine without a GPU, ``LARGEBATCH_GPU_TESTS_ON_CPU=1`` runs them on the
CPU instead (what is CUDA-specific, e.g. the TF32 switch, is then a no-op).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from largebatch.config import Config, load_config

from ..conftest import TINY_MNIST1D

ON_CPU = os.environ.get("LARGEBATCH_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"

GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not ON_CPU and not torch.cuda.is_available(), reason="needs CUDA (torch.cuda)"
    ),
]


@pytest.fixture
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions on CUDA (TF32 would round to ~1e-3)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tiny_config(*extra: str) -> Config:
    """A small MNIST-1D MLP run on the tier's device (600 examples: 7 updates an epoch)."""
    return load_config(None, [*TINY_MNIST1D, f"train.device={DEVICE}", *extra])


def image_tree(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    """A one-tree ``image_folder`` dataset of small JPEGs, coloured by class."""
    import numpy as np

    from tests.data.imagegen import write_jpeg

    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            write_jpeg(root / f"class{c}" / f"{i}.jpg", rng)
    return root
