"""One optimizer update: the only place where gradients are made and used.

For a global batch of ``B`` examples on ``W`` ranks, each rank's share cut into ``k``
micro-batches of ``m`` examples:

1. ``chain.begin_update(k)``; the LR of the update goes into every parameter group.
2. For micro-batch ``j``: forward (under bf16 autocast if asked), per-example cross-entropy
   ``l_i`` (optionally weighted by the chain's per-example loss weights ``w_i``), and backward of
   ``(W / B) * sum_i w_i l_i``. Summed over the ``k`` micro-batches and averaged by DDP's
   all-reduce over ``W`` ranks, the gradient is exactly that of the mean loss over the global
   batch. The all-reduce runs once, on the last micro-batch (``no_sync()`` for the others).
   With ``optim.grad_penalty = lambda`` the micro-batch objective gains
   ``(lambda / 4) |grad L_j|^2`` per example weight (``L_j`` the micro-batch mean loss), i.e. the
   update minimises ``L + lambda/(4k) sum_j |grad L_j|^2`` (double backward).
   ``chain.after_microbatch(j)`` sees the running gradient sums.
3. ``chain.before_step`` (the transforms in :data:`largebatch.gradient.pipeline.TRANSFORM_ORDER`),
   ``optimizer.step()``, ``chain.after_step``.

Nothing here reads a value back to the host: the loss comes back as a device tensor, and the
caller decides when to look at it (every ``train.log_every_steps`` updates).

Example::

    >>> import torch
    >>> from largebatch.gradient.base import TransformChain, UpdateInfo
    >>> model = torch.nn.Linear(4, 3)
    >>> parts = UpdateParts(model, torch.optim.SGD(model.parameters(), lr=0.1), TransformChain([]))
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> out = optimizer_update(parts, [(x[:4], y[:4]), (x[4:], y[4:])], 8, UpdateInfo(0, 0.1))
    >>> out.loss_sum.dtype, out.loss_sum.shape, out.grad_norm
    (torch.float64, torch.Size([]), None)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.engine.evaluate import autocast
from largebatch.gradient.base import TransformChain, UpdateInfo


@dataclass(frozen=True)
class UpdateParts:
    """What an update works with; fixed for a whole run.

    Attributes:
        model: the module to call: the model, or its DDP / ``torch.compile`` wrapper.
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        chain: the gradient transforms, in order.
        world_size: ``W``, the number of DDP ranks.
        amp: ``none`` or ``bf16``.
        channels_last: move 4-D inputs to channels_last memory format.
        ddp: the model is a DDP wrapper (``no_sync()`` on all but the last micro-batch).
        grad_penalty: ``lambda`` of the micro-batch gradient-norm penalty (0: off).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    chain: TransformChain
    world_size: int = 1
    amp: str = "none"
    channels_last: bool = False
    ddp: bool = False
    grad_penalty: float = 0.0


@dataclass(frozen=True)
class UpdateResult:
    loss_sum: torch.Tensor
    """This rank's sum of per-example losses (float64, on the device, without loss weights)."""
    grad_norm: torch.Tensor | None
    """L2 norm of the averaged gradient before the transforms (device), if it was asked for."""


def optimizer_update(
    parts: UpdateParts,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    global_batch_size: int,
    info: UpdateInfo,
    num_microbatches: int | None = None,
    measure_grad_norm: bool = False,
) -> UpdateResult:
    """Run one optimizer update on ``micro_batches`` (this rank's share of a global batch of
    ``global_batch_size`` examples). ``num_microbatches`` is needed when ``micro_batches`` has no
    ``len``; ``measure_grad_norm`` costs one fused norm over the gradients (no host sync)."""
    if num_microbatches is None:
        micro_batches = list(micro_batches)
        num_microbatches = len(micro_batches)
    for group in parts.optimizer.param_groups:
        group["lr"] = info.lr
    parts.optimizer.zero_grad(set_to_none=True)
    parts.chain.begin_update(num_microbatches, info)
    scale = parts.world_size / global_batch_size
    loss_sum: torch.Tensor | None = None
    for j, (x, y) in enumerate(micro_batches):
        if parts.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        last = j == num_microbatches - 1
        sync = parts.model.no_sync() if parts.ddp and not last else contextlib.nullcontext()
        with sync:
            with autocast(x.device, parts.amp):
                logits = parts.model(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            weights = parts.chain.loss_weights(len(y), losses.device, info)
            weighted = losses if weights is None else losses * weights
            objective = weighted.sum()
            if parts.grad_penalty:
                objective = objective + _penalty(parts, weighted.mean()) * len(y)
            (objective * scale).backward()
        parts.chain.after_microbatch(j)
        batch_sum = losses.detach().sum().double()
        loss_sum = batch_sum if loss_sum is None else loss_sum + batch_sum
    assert loss_sum is not None, "an update needs at least one micro-batch"
    grad_norm = _grad_norm(parts.optimizer) if measure_grad_norm else None
    parts.chain.before_step(info)
    parts.optimizer.step()
    parts.chain.after_step(info)
    return UpdateResult(loss_sum, grad_norm)


def _penalty(parts: UpdateParts, mean_loss: torch.Tensor) -> torch.Tensor:
    """``(lambda / 4) |grad mean_loss|^2``, differentiable (the graph is kept for backward)."""
    params = [p for g in parts.optimizer.param_groups for p in g["params"] if p.requires_grad]
    grads = torch.autograd.grad(mean_loss, params, create_graph=True)
    return parts.grad_penalty / 4 * sum(g.pow(2).sum() for g in grads)


def _grad_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
