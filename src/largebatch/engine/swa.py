"""Stochastic weight averaging (Izmailov et al. 2018) as the engine runs it.

From update ``start_step = round(train.swa_start_epoch * steps_per_epoch)`` on, the running mean
of the weights is kept::

    w_swa  <-  (n w_swa + w) / (n + 1),     n = averages so far

after every ``train.swa_every_steps`` updates, or at each epoch's end when that is unset. The
averaged weights never train; they are what the run reports: before each evaluation the
averaged model's BatchNorm statistics are recomputed over the training set (a cumulative mean over
one pass, ``torch.optim.swa_utils.update_bn``; under DDP each rank's pass over its shard, then
averaged over ranks). SWAP (Gupta et al. 2020) is this applied to the end of a large-batch run.

Example::

    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> swa = WeightAverage(model, start_step=0, every_steps=1)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(1.0)
    >>> swa.after_update(model, step=1)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(3.0)
    >>> swa.after_update(model, step=2)
    >>> swa.averaged.module.weight.tolist(), swa.count
    ([[2.0, 2.0]], 2)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from largebatch.data import Split
from largebatch.distributed import DistContext


class WeightAverage:
    """The running average of a model's weights from ``start_step`` on.

    Args:
        model: the (bare) model being trained.
        start_step: the first update count at which an average is taken.
        every_steps: updates between averages; None: at epoch ends only (see
            :meth:`after_epoch`).
    """

    def __init__(self, model: nn.Module, start_step: int, every_steps: int | None) -> None:
        self.averaged = AveragedModel(model)
        self.start_step = int(start_step)
        self.every_steps = every_steps

    @property
    def count(self) -> int:
        return int(self.averaged.n_averaged)

    def after_update(self, model: nn.Module, step: int) -> None:
        """Called after each update with the completed-update count ``step``."""
        if self.every_steps and step >= self.start_step and step % self.every_steps == 0:
            self.averaged.update_parameters(model)

    def after_epoch(self, model: nn.Module, step: int) -> None:
        if self.every_steps is None and step >= self.start_step:
            self.averaged.update_parameters(model)

    @torch.no_grad()
    def model_for_eval(
        self, train: Split, batch_size: int, dist: DistContext, channels_last: bool = False
    ) -> nn.Module:
        """The averaged model with BatchNorm statistics of its own weights, in eval mode."""
        indices = torch.arange(dist.rank, len(train), dist.world_size)

        def inputs():
            for x, _ in train.iter_batches(indices.split(batch_size)):
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x

        update_bn(inputs(), self.averaged)
        dist.average_buffers(self.averaged)
        return self.averaged.eval()

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
