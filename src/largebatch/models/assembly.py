"""Model assembly: the registry's model plus the surgery a config asks for, in one place.

Training and analysis both build a run's model here, so a checkpoint always loads into the same
module tree it was saved from. In order:

1. the registry model (``model.name``), its weights drawn from ``torch.manual_seed(train.seed)``;
2. Ghost BatchNorm (``model.ghost_batch_size``): every BatchNorm normalises chunks of that size;
3. SyncBatchNorm (``model.sync_batchnorm``, only under DDP): statistics over all ranks;
4. the device, then the memory format (``train.channels_last`` for image models).

Example::

    >>> from largebatch.config import Config
    >>> cfg = Config()
    >>> cfg.model.name, cfg.model.ghost_batch_size = "cnn1d", 16
    >>> model = assemble_model(cfg, input_shape=(40,), num_classes=10, device=torch.device("cpu"))
    >>> sorted({type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__})
    ['GhostBatchNorm1d']
"""

from __future__ import annotations

import torch
from torch import nn

from largebatch.config import Config
from largebatch.models.ghost_batchnorm import convert_to_ghost_batchnorm
from largebatch.models.registry import build_model


def assemble_model(
    cfg: Config,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    distributed: bool = False,
) -> nn.Module:
    """The model a run trains (or analysis loads), on ``device``, in training mode."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, input_shape, num_classes)
    if cfg.model.ghost_batch_size is not None:
        model = convert_to_ghost_batchnorm(model, cfg.model.ghost_batch_size)
    if distributed and cfg.model.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
