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
   ``chain.after_microbatch(j)`` sees the running gradient sums. Per-example losses ``l_i`` are
   ``UpdateParts.loss`` (``train.loss``, :mod:`largebatch.losses`), by default cross-entropy
   with ``train.label_smoothing`` (the training objective; evaluation reports the loss without
   smoothing).
   With a sharpness-aware kind (``optim.sam``; equations in :mod:`largebatch.optim.sam`) the
   gradient is taken at perturbed weights and applied at ``theta`` (restored by a copy):
   ``sam``: every micro-batch once at ``theta`` (all inside ``no_sync()``: the rank's own
   gradient ``g``), then again at ``theta + e(g)``; ``msam``: micro-batch by micro-batch, at
   ``theta`` then at ``theta + e(g_j)``; ``momentum``: the passes above at
   ``theta - rho v / |v|``. BatchNorm running statistics are frozen during the perturbed passes
   of ``sam`` and ``msam`` (updated once, by the unperturbed ones). The finite-difference form of
   the penalty is ``msam`` with ``e_j = (lambda / 2) grad L_j``.
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
from dataclasses import dataclass, field

import torch
from torch import nn

from largebatch.engine.evaluate import autocast
from largebatch.gradient.base import TransformChain, UpdateInfo
from largebatch.losses import LossFn, cross_entropy
from largebatch.optim.perturbation import Perturbation, ascent_scale, frozen_batchnorm
from largebatch.optim.sam import momentum_buffers


@dataclass(frozen=True)
class Sharpness:
    """A sharpness-aware gradient (:mod:`largebatch.optim.sam` has the equations).

    Attributes:
        kind: ``sam`` (one perturbation from this rank's whole batch), ``msam`` (one per
            micro-batch, from its own gradient) or ``momentum`` (Momentum-SAM: from the
            optimizer's momentum buffer, no extra pass).
        rho: the radius (normalised) or ``r`` (unnormalised: ``e = r g``, ``g`` the gradient of
            the mean loss of the examples it comes from).
        normalize: ``e = rho g / |g|`` (True) or ``e = rho g`` (False).
    """

    kind: str
    rho: float
    normalize: bool = True


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
        grad_penalty: ``lambda`` of the micro-batch gradient-norm penalty, double backward (0:
            off).
        loss: the per-example training loss ``loss(logits, y) -> (N,)``
            (:func:`largebatch.losses.training_loss` of the config: ``train.loss``, with
            ``train.label_smoothing`` for cross-entropy); plain cross-entropy by default.
        sharpness: the sharpness-aware kind, or None.
        perturbation: the weights' backup while they are perturbed (reused across updates).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    chain: TransformChain
    world_size: int = 1
    amp: str = "none"
    channels_last: bool = False
    ddp: bool = False
    grad_penalty: float = 0.0
    sharpness: Sharpness | None = None
    loss: LossFn = cross_entropy
    perturbation: Perturbation = field(default_factory=Perturbation)


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
    kind = parts.sharpness.kind if parts.sharpness is not None else None
    if num_microbatches is None or kind in ("sam", "msam"):
        micro_batches = list(micro_batches)  # the sharpness-aware kinds pass over them twice
        num_microbatches = len(micro_batches)
    for group in parts.optimizer.param_groups:
        group["lr"] = info.lr
    parts.optimizer.zero_grad(set_to_none=True)
    parts.chain.begin_update(num_microbatches, info)
    scale = parts.world_size / global_batch_size
    if kind == "sam":
        loss_sum = _sam_passes(parts, micro_batches, scale, info)  # type: ignore[arg-type]
    elif kind == "msam":
        loss_sum = _msam_passes(parts, micro_batches, scale, info)  # type: ignore[arg-type]
    elif kind == "momentum":
        loss_sum = _momentum_sam_passes(parts, micro_batches, num_microbatches, scale, info)
    else:
        loss_sum = _plain_passes(parts, micro_batches, num_microbatches, scale, info)
    grad_norm = _grad_norm(parts.optimizer) if measure_grad_norm else None
    parts.chain.before_step(info)
    parts.optimizer.step()
    parts.chain.after_step(info)
    return UpdateResult(loss_sum, grad_norm)


def _pass(
    parts: UpdateParts,
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float,
    info: UpdateInfo,
    sync: bool,
) -> torch.Tensor:
    """Forward and backward of one micro-batch, adding ``scale * sum_i w_i l_i`` to ``p.grad``
    (all-reduced when ``sync`` under DDP); returns this micro-batch's loss sum (float64)."""
    if parts.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    no_sync = parts.model.no_sync() if parts.ddp and not sync else contextlib.nullcontext()
    with no_sync:
        with autocast(x.device, parts.amp):
            logits = parts.model(x)
        # bf16 / fp16 logits in fp32; a float64 model keeps its precision
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        losses = parts.loss(logits, y)
        weights = parts.chain.loss_weights(len(y), losses.device, info)
        weighted = losses if weights is None else losses * weights
        objective = weighted.sum()
        if parts.grad_penalty:
            objective = objective + _penalty(parts, weighted.mean()) * len(y)
        (objective * scale).backward()
    return losses.detach().sum().double()


def _plain_passes(
    parts: UpdateParts,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_microbatches: int,
    scale: float,
    info: UpdateInfo,
) -> torch.Tensor:
    """One forward-backward per micro-batch; the last one all-reduces."""
    loss_sum: torch.Tensor | None = None
    for j, (x, y) in enumerate(micro_batches):
        batch_sum = _pass(parts, x, y, scale, info, sync=j == num_microbatches - 1)
        parts.chain.after_microbatch(j)
        loss_sum = batch_sum if loss_sum is None else loss_sum + batch_sum
    assert loss_sum is not None, "an update needs at least one micro-batch"
    return loss_sum


def _sam_passes(
    parts: UpdateParts,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    scale: float,
    info: UpdateInfo,
) -> torch.Tensor:
    """SAM on this rank's batch: the gradient ``g`` of all its micro-batches at ``theta`` (no
    all-reduce: the rank's own), ``e = rho g/|g|`` (or ``r g``), then every micro-batch again at
    ``theta + e`` with BatchNorm statistics frozen; the last backward all-reduces."""
    assert parts.sharpness is not None
    loss_sum = sum(_pass(parts, x, y, scale, info, sync=False) for x, y in batches)
    params, grads = _params_with_grads(parts.optimizer)
    examples = sum(len(y) for _, y in batches)
    step = ascent_scale(
        grads, parts.sharpness.rho, parts.sharpness.normalize, loss_scale=scale * examples
    )
    parts.optimizer.zero_grad(set_to_none=True)
    parts.perturbation.apply_(params, grads, step)
    try:
        with frozen_batchnorm(parts.model):
            for j, (x, y) in enumerate(batches):
                _pass(parts, x, y, scale, info, sync=j == len(batches) - 1)
                parts.chain.after_microbatch(j)
    finally:
        parts.perturbation.restore_()
    return loss_sum  # type: ignore[return-value]


def _msam_passes(
    parts: UpdateParts,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    scale: float,
    info: UpdateInfo,
) -> torch.Tensor:
    """m-SAM: each micro-batch's own gradient ``g_j`` at ``theta`` (kept apart from the running
    sum), ``e_j`` from it, then its gradient at ``theta + e_j`` added to the sum; BatchNorm
    statistics frozen in the perturbed passes; the last perturbed backward all-reduces."""
    assert parts.sharpness is not None
    params = [p for g in parts.optimizer.param_groups for p in g["params"] if p.requires_grad]
    loss_sum: torch.Tensor | None = None
    for j, (x, y) in enumerate(batches):
        running = [p.grad for p in params]
        for p in params:
            p.grad = None
        batch_sum = _pass(parts, x, y, scale, info, sync=False)
        own = [(p, p.grad) for p in params if p.grad is not None]
        directions = [g for _, g in own]
        step = ascent_scale(
            directions, parts.sharpness.rho, parts.sharpness.normalize, loss_scale=scale * len(y)
        )
        for p, g in zip(params, running, strict=True):
            p.grad = g
        parts.perturbation.apply_([p for p, _ in own], directions, step)
        try:
            with frozen_batchnorm(parts.model):
                _pass(parts, x, y, scale, info, sync=j == len(batches) - 1)
        finally:
            parts.perturbation.restore_()
        parts.chain.after_microbatch(j)
        loss_sum = batch_sum if loss_sum is None else loss_sum + batch_sum
    assert loss_sum is not None, "an update needs at least one micro-batch"
    return loss_sum


def _momentum_sam_passes(
    parts: UpdateParts,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_microbatches: int,
    scale: float,
    info: UpdateInfo,
) -> torch.Tensor:
    """Momentum-SAM: the usual passes at ``theta - rho v/|v|`` (``v`` the optimizer's momentum
    buffer, the same on every rank; none before the first update), then ``theta`` restored."""
    assert parts.sharpness is not None
    pairs = momentum_buffers(parts.optimizer)
    if pairs:
        buffers = [v for _, v in pairs]
        step = ascent_scale(buffers, parts.sharpness.rho, normalize=True)
        parts.perturbation.apply_([p for p, _ in pairs], buffers, -step)
    try:
        return _plain_passes(parts, micro_batches, num_microbatches, scale, info)
    finally:
        parts.perturbation.restore_()


def _params_with_grads(
    optimizer: torch.optim.Optimizer,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    pairs = [(p, p.grad) for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return [p for p, _ in pairs], [g for _, g in pairs]


def _penalty(parts: UpdateParts, mean_loss: torch.Tensor) -> torch.Tensor:
    """``(lambda / 4) |grad mean_loss|^2``, differentiable (the graph is kept for backward)."""
    params = [p for g in parts.optimizer.param_groups for p in g["params"] if p.requires_grad]
    grads = torch.autograd.grad(mean_loss, params, create_graph=True)
    return parts.grad_penalty / 4 * sum(g.pow(2).sum() for g in grads)


def _grad_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
