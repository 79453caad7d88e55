"""Evaluation: mean loss and accuracy over a whole split, in the model's current mode."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.data import Split
from largebatch.distributed import DistContext
from largebatch.losses import LossFn, cross_entropy


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``amp == "bf16"``, else nothing."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    batch_size: int,
    dist: DistContext,
    amp: str = "none",
    channels_last: bool = False,
    loss_fn: LossFn = cross_entropy,
) -> tuple[float, float]:
    """Mean loss ``(1/N) sum_i l_i`` (nats; ``loss_fn`` per example, cross-entropy by default:
    the run's :func:`largebatch.losses.evaluation_loss`) and accuracy (argmax, a fraction)
    over the whole split.

    Under DDP each rank evaluates every ``world_size``-th example and the sums are all-reduced, so
    every rank returns the numbers one process would compute.
    """
    indices = torch.arange(dist.rank, len(split), dist.world_size)
    device = next(model.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, correct]
    for x, y in split.iter_batches(indices.split(batch_size)):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x)
        if loss_fn is cross_entropy:
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        else:
            sums[0] += loss_fn(logits.float(), y).double().sum()
        sums[1] += (logits.argmax(1) == y).sum().double()
    totals = dist.all_reduce_sum(sums).tolist()
    return totals[0] / len(split), totals[1] / len(split)
