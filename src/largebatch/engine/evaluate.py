"""Evaluation: mean loss and accuracy over a whole split, in the model's current mode."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.data import Split
from largebatch.distributed import DistContext


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
) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy (a fraction) over the whole split.

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
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum().double()
    totals = dist.all_reduce_sum(sums).tolist()
    return totals[0] / len(split), totals[1] / len(split)
