"""A tiny largebatch plugin: a model with its own arguments, a generated dataset and a loss.

It is the README's example ("Your own model and data"). The ``.dist-info`` folder beside it
makes it an installed package for ``importlib.metadata`` (what ``pip install`` of a package
with this entry point would leave): with the folder on ``PYTHONPATH``, every ``largebatch``
command finds the entry point

    [largebatch.plugins]
    toy = lb_toy_plugin:register

and calls :func:`register` once per process; a config may name it instead
(``train.plugins: [lb_toy_plugin:register]``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.config import DataConfig, ModelConfig
from largebatch.data import DatasetBundle, TensorSplit
from largebatch.plugins import (
    DatasetInfo,
    LossInfo,
    ModelInfo,
    register_dataset,
    register_loss,
    register_model,
)

NUM_CLASSES, NUM_FEATURES = 4, 16


def build_toy_mlp(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 32,
    depth: int = 2,
) -> nn.Module:
    """``depth`` hidden ReLU layers of ``width`` units (``model.args.width``, ``.depth``)."""
    layers: list[nn.Module] = [nn.Flatten()]
    size = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, num_classes))
    return nn.Sequential(*layers)


def build_toy_blobs(cfg: DataConfig, device: torch.device) -> DatasetBundle:
    """``data.num_samples`` points in 16-D around 4 class centres (unit Gaussian noise), split
    ``data.train_fraction`` / rest; deterministic given ``data.split_seed``."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    centres = 1.5 * torch.randn(NUM_CLASSES, NUM_FEATURES, generator=g)
    y = torch.arange(cfg.num_samples) % NUM_CLASSES
    x = centres[y] + torch.randn(cfg.num_samples, NUM_FEATURES, generator=g)
    n_train = round(cfg.num_samples * cfg.train_fraction)
    return DatasetBundle(
        train=TensorSplit(x[:n_train], y[:n_train]).to(device),
        val=TensorSplit(x[n_train:], y[n_train:]).to(device),
        num_classes=NUM_CLASSES,
        input_shape=(NUM_FEATURES,),
        info={"source": "generated (lb_toy_plugin)", "num_train": n_train},
    )


def toy_focal(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), gamma = 2: ``-(1 - p_y)^2 log p_y`` per example (nats)."""
    log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    return -((1 - log_p.exp()) ** 2) * log_p


def register() -> None:
    register_model(ModelInfo("toy_mlp", "toy ReLU MLP", build_toy_mlp, input_kind="vector"))
    register_dataset(
        DatasetInfo("toy_blobs", "4 Gaussian blobs in 16-D", build_toy_blobs, False, "vector")
    )
    register_loss(LossInfo("toy_focal", "focal loss, gamma 2", toy_focal))
