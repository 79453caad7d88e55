import os

import pytest
import torch

# 2 shared cores: one intra-op thread keeps timings stable and avoids OpenMP oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


# A small, fast MNIST-1D MLP run (600 examples: 480 train, 7 updates of 64 an epoch).
TINY_MNIST1D = (
    "data.name=mnist1d",
    "data.num_samples=600",
    "model.name=mlp",
    "model.hidden=[32,32]",
    "train.epochs=2",
    "train.global_batch_size=64",
    "train.progress=false",
    "optim.lr=0.05",
    "optim.base_batch_size=64",
)


@pytest.fixture
def tiny_mnist1d_overrides() -> list[str]:
    """A small, fast MNIST-1D MLP run (600 examples)."""
    return list(TINY_MNIST1D)
