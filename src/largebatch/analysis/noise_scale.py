"""The simple gradient noise scale (McCandlish, Kaplan, Amodei et al. 2018) at one fixed point.

At fixed parameters ``theta``, let ``g_i`` be the gradient of example ``i``'s loss, ``G = E[g_i]``
the true gradient and ``Sigma = Cov[g_i]`` the per-example gradient covariance (``P x P``). A
mini-batch mean of ``B`` examples has mean ``G`` and covariance ``Sigma / B``. The *simple noise
scale*

    B_simple = tr(Sigma) / |G|^2

is the batch size at which the mini-batch noise ``tr(Sigma) / B`` equals the signal ``|G|^2``;
McCandlish et al. show it predicts the critical batch size beyond which larger batches stop
cutting the number of steps. From ``N`` per-example gradients with mean ``g_bar``:

    tr(Sigma)^ = (1 / (N - 1)) sum_i |g_i - g_bar|^2 = (sum_i |g_i|^2 - N |g_bar|^2) / (N - 1),

unbiased, and since ``E|g_bar|^2 = |G|^2 + tr(Sigma) / N``,

    |G|^2^ = |g_bar|^2 - tr(Sigma)^ / N,   also unbiased (it can come out negative near a minimum,
    where ``G ~ 0``; ``B_simple`` is then reported as infinite).

Per-example gradients come from ``torch.func`` (``vmap`` over ``grad`` of a ``functional_call``).
With BatchNorm, or when ``P`` is too large for that, we use gradients of disjoint small batches of
size ``b`` instead: their covariance is ``Sigma / b``, so ``tr(Sigma)^ = b * tr(Cov_b)^`` with the
same unbiased formula over the ``m = N / b`` batch means.

Next to it, :func:`noise_comparison` puts the noise the paper's gradient-noise transform injects,
``sigma_t^2 = alpha / (1 + t)^gamma`` per entry at step ``t``, beside the mini-batch noise per entry
``tr(Sigma) / (P B)`` at the run's batch ``B`` (and at its base batch), so one sees whether the
injected noise is of the order of what the larger batch removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from largebatch.analysis.batchnorm import bn_mode as bn_mode_context
from largebatch.analysis.batchnorm import has_batchnorm, preserved_buffers
from largebatch.analysis.hvp import flatten, trainable_parameters

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("auto", "per_example", "per_batch")
MAX_PER_EXAMPLE_PARAMS = 20_000_000
"""``auto`` switches to per-batch gradients above this many parameters."""


@dataclass
class NoiseScale:
    trace_sigma: float
    """Unbiased estimate of ``tr(Sigma)``, the per-example gradient covariance's trace."""
    grad_norm_sq: float
    """Unbiased estimate of ``|G|^2`` (may be negative when ``G ~ 0``)."""
    b_simple: float
    """``trace_sigma / grad_norm_sq`` (``inf`` when ``grad_norm_sq <= 0``)."""
    mean_grad_norm_sq: float
    """``|g_bar|^2``, the biased plug-in value, for reference."""
    num_samples: int
    num_params: int
    method: str
    """``per_example`` or ``per_batch``."""
    group_size: int
    """1 for per-example gradients, ``b`` for per-batch ones."""
    num_groups: int


def _stats(
    sum_g: torch.Tensor, sum_sq: float, groups: int, group_size: int
) -> tuple[float, float, float]:
    mean = sum_g / groups
    mean_sq = float(mean @ mean)
    trace_group = (sum_sq - groups * mean_sq) / (groups - 1)
    trace_sigma = group_size * trace_group
    grad_norm_sq = mean_sq - trace_sigma / (groups * group_size)
    return trace_sigma, grad_norm_sq, mean_sq


def _per_example_sums(
    model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn, chunk: int
) -> tuple[torch.Tensor, float, int]:
    names, params = trainable_parameters(model)
    detached = {n: p.detach() for n, p in zip(names, params, strict=True)}

    def one_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0))
    dim = sum(p.numel() for p in params)
    sum_g = torch.zeros(dim, dtype=torch.float64, device=params[0].device)
    sum_sq, count = 0.0, 0
    for x, y in batches:
        for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
            grads = per_example(detached, xs, ys)
            g = torch.cat([grads[n].reshape(len(xs), -1) for n in names], dim=1).double()
            sum_g += g.sum(dim=0)
            sum_sq += float((g * g).sum())
            count += len(xs)
    return sum_g, sum_sq, count


def _per_batch_sums(
    model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn, group_size: int
) -> tuple[torch.Tensor, float, int]:
    _, params = trainable_parameters(model)
    x_all = torch.cat([x for x, _ in batches])
    y_all = torch.cat([y for _, y in batches])
    groups = len(y_all) // group_size  # a partial last group would have another covariance
    dim = sum(p.numel() for p in params)
    sum_g = torch.zeros(dim, dtype=torch.float64, device=params[0].device)
    sum_sq = 0.0
    for k in range(groups):
        sl = slice(k * group_size, (k + 1) * group_size)
        loss = loss_fn(model(x_all[sl]), y_all[sl])
        g = flatten(torch.autograd.grad(loss, params)).double()
        sum_g += g
        sum_sq += float(g @ g)
    return sum_g, sum_sq, groups


def gradient_noise_scale(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    loss_fn: LossFn = F.cross_entropy,
    method: str = "auto",
    group_size: int = 8,
    bn_mode: str = "eval",
    chunk: int = 64,
) -> NoiseScale:
    """``tr(Sigma)``, ``|G|^2`` and ``B_simple`` at the model's current parameters.

    Args:
        model: the network (not modified: parameters, buffers, flags restored).
        batches: fixed ``(x, y)`` batches; ``N`` examples in all.
        loss_fn: per-batch mean loss (cross-entropy by default).
        method: ``per_example`` (``torch.func``), ``per_batch`` (groups of ``group_size``) or
            ``auto``: per-example unless the model has BatchNorm or more than
            :data:`MAX_PER_EXAMPLE_PARAMS` parameters.
        group_size: ``b`` for ``per_batch``; ``N // b >= 2`` groups are needed.
        bn_mode: ``"eval"`` or ``"train"`` BatchNorm mode (see ``analysis.batchnorm``).
        chunk: examples per ``vmap`` call (bounds memory at ``chunk * P`` floats).

    Returns:
        A :class:`NoiseScale`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    _, params = trainable_parameters(model)
    num_params = sum(p.numel() for p in params)
    if method == "auto":
        too_big = num_params > MAX_PER_EXAMPLE_PARAMS
        method = "per_batch" if has_batchnorm(model) or too_big else "per_example"
    if method == "per_example" and bn_mode == "train" and has_batchnorm(model):
        raise ValueError("per-example gradients are undefined with batch-statistics BatchNorm")
    with bn_mode_context(model, bn_mode), preserved_buffers(model):
        if method == "per_example":
            sum_g, sum_sq, groups = _per_example_sums(model, batches, loss_fn, chunk)
            size = 1
        else:
            sum_g, sum_sq, groups = _per_batch_sums(model, batches, loss_fn, group_size)
            size = group_size
    if groups < 2:
        raise ValueError(
            f"{groups} gradient sample(s): need at least 2; use more samples or a smaller group"
        )
    trace_sigma, grad_norm_sq, mean_sq = _stats(sum_g, sum_sq, groups, size)
    b_simple = trace_sigma / grad_norm_sq if grad_norm_sq > 0 else math.inf
    return NoiseScale(
        trace_sigma=trace_sigma,
        grad_norm_sq=grad_norm_sq,
        b_simple=b_simple,
        mean_grad_norm_sq=mean_sq,
        num_samples=groups * size,
        num_params=num_params,
        method=method,
        group_size=size,
        num_groups=groups,
    )


def injected_noise_variance(alpha: float, gamma: float, step: int) -> float:
    """``sigma_t^2 = alpha / (1 + t)^gamma``: the per-entry variance the gradient-noise transform
    adds at update ``t`` (``t = 0`` for the first update).

    >>> injected_noise_variance(1e-5, 0.55, 0), round(injected_noise_variance(1e-5, 0.5, 99), 12)
    (1e-05, 1e-06)
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return alpha / (1.0 + step) ** gamma


def minibatch_noise_variance(trace_sigma: float, num_params: int, batch_size: int) -> float:
    """``tr(Sigma) / (P B)``: the mean per-entry variance of a mini-batch gradient of ``B``."""
    return trace_sigma / (num_params * batch_size)


def noise_comparison(
    scale: NoiseScale,
    *,
    alpha: float,
    gamma: float,
    step: int,
    batch_size: int,
    base_batch_size: int | None = None,
    injected: float | None = None,
) -> dict[str, Any]:
    """The injected noise beside the mini-batch noise, per gradient entry, at one checkpoint.

    Args:
        scale: the measured noise scale.
        alpha, gamma: the run's ``noise.alpha`` and ``noise.gamma``.
        step: completed optimizer updates at the checkpoint (the ``t`` of the next update).
        batch_size: the run's global batch ``B``.
        base_batch_size: the small batch the run's learning rate was set for; when smaller than
            ``B``, the variance the larger batch removed, ``tr(Sigma) / P * (1/b - 1/B)``, is given.
        injected: the injected variance per entry when it is not the isotropic closed form
            (the shaped kinds size their noise from measured gradients: the run records it in
            ``steps.jsonl``); ``None``: ``alpha / (1 + step)^gamma``.
    """
    if injected is None:
        injected = injected_noise_variance(alpha, gamma, step)
    at_batch = minibatch_noise_variance(scale.trace_sigma, scale.num_params, batch_size)
    out: dict[str, Any] = {
        "alpha": alpha,
        "gamma": gamma,
        "step": step,
        "injected_variance_per_entry": injected,
        "batch_size": batch_size,
        "minibatch_variance_per_entry": at_batch,
        "injected_over_minibatch": injected / at_batch if at_batch > 0 else math.inf,
    }
    if base_batch_size is not None:
        at_base = minibatch_noise_variance(scale.trace_sigma, scale.num_params, base_batch_size)
        out["base_batch_size"] = base_batch_size
        out["minibatch_variance_per_entry_at_base"] = at_base
        out["variance_removed_by_larger_batch"] = max(at_base - at_batch, 0.0)
    return out
