"""The process group of a run: ``torchrun`` sets the environment, PyTorch does the rest.

A run started by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) joins the default process
group with gloo on CPUs and NCCL on GPUs; each rank takes ``cuda:LOCAL_RANK`` when it uses CUDA.
A plain ``python``/``largebatch`` start is world size 1 and creates no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_min(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (tensors inside travel through the CPU)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: object) -> list[object]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @torch.no_grad()
    def average_buffers(self, module: torch.nn.Module) -> None:
        """Replace every floating-point buffer (BatchNorm running mean and variance) by its
        mean over the ranks, so evaluation and checkpoints use statistics of all the data, the
        same on every rank and independent of which rank saves. Integer buffers
        (``num_batches_tracked``) are equal on every rank and left as they are."""
        if not self.enabled:
            return
        floats = [b for b in module.buffers() if b.is_floating_point()]
        if floats:
            flat = torch.cat([b.reshape(-1) for b in floats])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
            torch._foreach_copy_(
                floats,
                [
                    v.view_as(b)
                    for v, b in zip(flat.split([b.numel() for b in floats]), floats, strict=True)
                ],
            )

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group torchrun describes (no-op at world size 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed(completed: bool = True) -> None:
    """Leave the process group. After a run that ended the same way on every rank
    (``completed``), the ranks first meet at a barrier, so the rank hosting the rendezvous store
    never tears it down while another still uses it; after an error on one rank (the others may
    be inside a collective) the group is destroyed without waiting, and torchrun stops the rest."""
    if dist.is_available() and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()
