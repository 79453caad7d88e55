"""BatchNorm in analysis code: an explicit mode, and recomputing running statistics.

Every diagnostic of a minimum evaluates the loss at some parameter vector, and with BatchNorm the
loss depends on *which* normalisation statistics are used. Leaving that to whatever mode the model
happens to be in is a silent bug, so analysis code chooses one of two explicit modes:

* ``"eval"`` (the default): BatchNorm normalises with its running statistics, so the loss is a
  fixed function of the parameters, the function the trained network computes at test time;
* ``"train"``: BatchNorm normalises with the statistics of each batch,
  ``(x - mean_B(x)) / sqrt(var_B(x) + eps)``, the function SGD was optimising; the running
  statistics are *not* updated.

Dropout is always off (it would make the loss random). :func:`bn_mode` sets a mode and restores
every module's ``training`` flag on exit.

When parameters move far (interpolation, loss surfaces), the running statistics of the original
network no longer describe the activations of the new one: interpolating running statistics
between two networks is wrong too, since the variance of an interpolated layer is not the
interpolation of the variances. :func:`recompute_bn_stats` recomputes them from training data as
a cumulative average over batches (``momentum=None``)::

    running_mean = (1 / K) sum_k mean_{B_k}(x),   running_var = (1 / K) sum_k var_{B_k}(x)

(the unbiased per-batch variance, as PyTorch stores it), which is what
``torch.optim.swa_utils.update_bn`` does for SWA.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BNMode = Literal["eval", "train"]
BN_MODES: tuple[str, ...] = ("eval", "train")


def bn_modules(model: nn.Module) -> list[_BatchNorm]:
    """All BatchNorm layers of ``model`` (1-D, 2-D, 3-D, Sync, and subclasses such as ghost BN)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(bn_modules(model))


def check_bn_mode(mode: str) -> BNMode:
    if mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}; got {mode!r}")
    return mode  # type: ignore[return-value]


@contextmanager
def bn_mode(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Put ``model`` in an analysis mode for the ``with`` block; restore its flags afterwards.

    Args:
        model: any module.
        mode: ``"eval"``: everything in eval mode (running statistics). ``"train"``: BatchNorm
            layers normalise with batch statistics but leave their running statistics and
            ``num_batches_tracked`` untouched; all other modules (dropout) in eval mode.

    Example:

    >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    >>> with bn_mode(model, "train"):  # batch statistics, dropout off
    ...     _ = model(torch.randn(8, 3))
    >>> int(model[1].num_batches_tracked), model.training  # nothing updated, flags restored
    (0, True)
    """
    check_bn_mode(mode)
    training = [(m, m.training) for m in model.modules()]
    tracking: list[tuple[_BatchNorm, bool]] = []
    try:
        model.eval()
        if mode == "train":
            for m in bn_modules(model):
                # With track_running_stats=False a training-mode BN layer passes no running
                # buffers to F.batch_norm: batch statistics, and nothing is updated.
                tracking.append((m, m.track_running_stats))
                m.track_running_stats = False
                m.training = True
        yield model
    finally:
        for m, flag in tracking:
            m.track_running_stats = flag
        for m, flag in training:
            m.training = flag


@contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every buffer of ``model`` (running statistics, counters) on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def _inputs(batch: torch.Tensor | tuple | list) -> torch.Tensor:
    return batch[0] if isinstance(batch, tuple | list) else batch


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
) -> int:
    """Reset and recompute BatchNorm running statistics of ``model`` from ``batches``.

    Each BN layer's statistics are reset, its momentum set to ``None`` (cumulative average) for
    the passes, and one forward pass in train mode is made per batch under ``no_grad``. Only
    BatchNorm layers are in train mode during the passes: dropout stays off, so the statistics
    describe the activations the network produces at evaluation time. Afterwards the model is in
    eval mode and each layer's momentum is what it was.

    Args:
        model: the network whose parameters are already set.
        batches: training batches, either ``x`` tensors or ``(x, y)`` pairs (``y`` is ignored).
            Use a fixed, seeded list so that the result is reproducible.

    Returns:
        The number of examples passed through (0 when the model has no BatchNorm, in which case
        nothing is run).
    """
    layers = bn_modules(model)
    if not layers:
        model.eval()
        return 0
    momenta = [m.momentum for m in layers]
    count = 0
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for batch in batches:
            x = _inputs(batch)
            model(x)
            count += len(x)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    if count == 0:
        raise ValueError("recompute_bn_stats got no batches; pass training batches")
    return count
