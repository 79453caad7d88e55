"""Which examples each rank trains on: the batch plan, the epoch's order, global batches, shards.

Every quantity here is a pure function of the config, the epoch and the rank, so a resumed run and
a run at another world size see the same global batches:

- the **batch plan** derives ``per_device_batch_size = global_batch_size / W`` and
  ``accumulation_steps = per_device_batch_size / micro_batch_size`` from the global batch;
- the **epoch order** is one permutation of the training set drawn from the seed stream
  ``("order", epoch)`` (the same on every rank);
- it is cut into **global batches** of ``global_batch_size`` examples;
- rank ``r`` of ``W`` takes the ``r``-th of ``W`` contiguous **slices** of each global batch.

Example::

    >>> plan = plan_batches(global_batch_size=512, micro_batch_size=64, world_size=2)
    >>> plan.per_device_batch_size, plan.accumulation_steps
    (256, 4)
    >>> batches = global_batches(epoch_order(10, seed=0, epoch=0), 4, drop_last=True)
    >>> [len(b) for b in batches]
    [4, 4]
    >>> [len(local_slice(batches[0], r, 2)) for r in range(2)]
    [2, 2]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from largebatch.errors import UserError
from largebatch.seeding import stream_seed


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    per_device_batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    world_size: int


def plan_batches(
    global_batch_size: int, micro_batch_size: int | None, world_size: int
) -> BatchPlan:
    """Derive the per-device batch and the accumulation steps from the global batch."""
    if global_batch_size % world_size:
        raise UserError(
            f"train.global_batch_size={global_batch_size} is not divisible by the world size "
            f"{world_size}; choose a global batch that is a multiple of {world_size}"
        )
    per_device = global_batch_size // world_size
    micro = per_device if micro_batch_size is None else micro_batch_size
    if micro > per_device or per_device % micro:
        raise UserError(
            f"train.micro_batch_size={micro} must divide the per-device batch {per_device} "
            f"(= global {global_batch_size} / world size {world_size})"
        )
    return BatchPlan(global_batch_size, per_device, micro, per_device // micro, world_size)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: a pure function of the seed and the epoch."""
    g = torch.Generator().manual_seed(stream_seed(seed, "order", epoch))
    return torch.randperm(num_examples, generator=g)


def global_batches(
    order: torch.Tensor, batch_size: int, drop_last: bool, world_size: int = 1
) -> list[torch.Tensor]:
    """Cut an epoch's order into global batches. A last partial batch is kept only if
    ``drop_last`` is False and it has at least one example per rank."""
    batches = list(order.split(batch_size))
    if batches and len(batches[-1]) < batch_size:
        if drop_last or len(batches[-1]) < world_size:
            batches.pop()
    return batches


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool, world_size: int) -> int:
    """The number of optimizer updates in one epoch (what :func:`global_batches` yields)."""
    full, rest = divmod(num_examples, batch_size)
    return full + (1 if rest and not drop_last and rest >= world_size else 0)


def local_slice(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s disjoint share of a global batch (contiguous, equal up to one example)."""
    return torch.tensor_split(batch, world_size)[rank]
