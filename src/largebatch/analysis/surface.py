"""Filter-normalised loss surfaces (Li, Xu, Taylor, Studer & Goldstein, NeurIPS 2018).

A random direction ``d`` in parameter space is drawn with standard normal entries and then
*filter-normalised*: for every filter ``i`` of every weight tensor (a row of a linear layer's
weight, an output channel of a convolution: a slice along dimension 0),

    d_i <- d_i * |theta_i| / |d_i|   (Frobenius norms),

so that a step ``a`` along ``d`` changes each filter by the same fraction ``a`` of its own norm.
This removes the scale invariance of ReLU networks with BatchNorm, where multiplying a filter by
``c`` changes nothing but would make a plain random direction look ``c`` times flatter. Biases and
BatchNorm parameters (tensors of dimension <= 1) get a zero direction by default, Li et al.'s
``ignore='biasbn'``; otherwise their direction is a copy of the parameter itself (norm ratio 1).

The 1-D curve is ``L(theta + a d)`` and the 2-D grid ``L(theta + a d_1 + b d_2)`` with two
independent directions (nearly orthogonal in high dimension). With BatchNorm, the running
statistics are recomputed at every point from training batches by default (see
:mod:`largebatch.analysis.batchnorm`): the original statistics do not describe a moved network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.analysis.batchnorm import has_batchnorm, recompute_bn_stats
from largebatch.analysis.interpolate import evaluate

Batch = tuple[torch.Tensor, torch.Tensor]


def filter_normalized_direction(
    model: nn.Module,
    generator: torch.Generator | None = None,
    *,
    ignore_bias_bn: bool = True,
) -> list[torch.Tensor]:
    """A random direction shaped like ``model.parameters()``, filter-normalised.

    Args:
        model: the network at the centre point ``theta``.
        generator: seeds the direction (a CPU ``torch.Generator``; drawn on the CPU).
        ignore_bias_bn: zero direction for parameters of dimension <= 1 (biases, BN weights);
            False: copy the parameter itself, as Li et al. do without ``ignore``.

    Returns:
        One tensor per parameter, on the parameter's device and dtype.
    """
    direction = []
    for p in model.parameters():
        w = p.detach()
        if w.dim() <= 1:
            direction.append(torch.zeros_like(w) if ignore_bias_bn else w.clone())
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        w64 = w.to(torch.float64).cpu()
        w_norms = w64.reshape(len(w64), -1).norm(dim=1)  # (filters,)
        d_norms = d.reshape(len(d), -1).norm(dim=1)
        scale = w_norms / d_norms.clamp_min(1e-12)
        d = d * scale.view(-1, *([1] * (d.dim() - 1)))
        direction.append(d.to(device=w.device, dtype=w.dtype))
    return direction


@dataclass
class SurfaceResult:
    coords: list[float]
    """Step sizes along each direction (the same grid for both in 2-D)."""
    loss: torch.Tensor
    """``(G,)`` for 1-D; ``(G, G)`` for 2-D with ``loss[i, j]`` at ``(coords[i], coords[j])``."""
    accuracy: torch.Tensor
    dim: int
    bn_recomputed: bool
    num_samples: int
    num_evaluations: int


def loss_surface(
    model: nn.Module,
    batches: Sequence[Batch],
    coords: Sequence[float],
    *,
    dim: int = 1,
    generator: torch.Generator | None = None,
    directions: Sequence[list[torch.Tensor]] | None = None,
    ignore_bias_bn: bool = True,
    bn_recompute: bool = True,
    bn_batches: Sequence[Batch] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> SurfaceResult:
    """Loss and accuracy along one or over two filter-normalised random directions.

    Args:
        model: the network at the centre; not modified.
        batches: fixed ``(x, y)`` batches on which loss and accuracy are measured.
        coords: step sizes, e.g. ``parse_range("-1:1:21")``.
        dim: 1 (a curve) or 2 (a grid).
        generator: seeds the directions when ``directions`` is None.
        directions: ``dim`` directions to use instead of random ones.
        ignore_bias_bn: see :func:`filter_normalized_direction`.
        bn_recompute: recompute BatchNorm statistics at every point (ignored without BN).
        bn_batches: training batches for the recomputation (default: ``batches``).

    Returns:
        A :class:`SurfaceResult`.
    """
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    if directions is None:
        directions = [
            filter_normalized_direction(model, generator, ignore_bias_bn=ignore_bias_bn)
            for _ in range(dim)
        ]
    if len(directions) != dim:
        raise ValueError(f"{dim}-D surface needs {dim} directions, got {len(directions)}")
    shapes = [p.shape for p in model.parameters()]
    for direction in directions:
        if [d.shape for d in direction] != shapes:
            raise ValueError("a direction must hold one tensor per parameter, shaped like it")
    recompute = bn_recompute and has_batchnorm(model)
    work = copy.deepcopy(model)
    centre = [p.detach().clone() for p in model.parameters()]
    params = list(work.parameters())

    def at(steps: Sequence[float]) -> tuple[float, float]:
        with torch.no_grad():
            for i, (p, c) in enumerate(zip(params, centre, strict=True)):
                p.copy_(c)
                for step, direction in zip(steps, directions, strict=True):
                    p.add_(direction[i], alpha=step)
        if recompute:
            recompute_bn_stats(work, bn_batches if bn_batches is not None else batches)
        return evaluate(work, batches, loss_fn)

    n = len(coords)
    shape = (n,) if dim == 1 else (n, n)
    loss = torch.empty(shape, dtype=torch.float64)
    accuracy = torch.empty(shape, dtype=torch.float64)
    for i, a in enumerate(coords):
        if dim == 1:
            loss[i], accuracy[i] = at([a])
            continue
        for j, b in enumerate(coords):
            loss[i, j], accuracy[i, j] = at([a, b])
    return SurfaceResult(
        coords=[float(c) for c in coords],
        loss=loss,
        accuracy=accuracy,
        dim=dim,
        bn_recomputed=recompute,
        num_samples=sum(len(y) for _, y in batches),
        num_evaluations=loss.numel(),
    )
