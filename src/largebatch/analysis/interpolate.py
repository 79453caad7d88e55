"""The 1-D parametric plot between two solutions (Goodfellow et al. 2015; Keskar et al. 2017).

For two networks of the same architecture with parameters ``theta_A`` and ``theta_B`` (in the
paper, the small-batch and the large-batch solution),

    theta(a) = (1 - a) theta_A + a theta_B,   a on a grid such as [-1, 2],

and the training and validation loss and accuracy are measured at each ``a``. ``a = 0`` is
exactly A and ``a = 1`` exactly B (the formula is exact at both ends in floating point); outside
``[0, 1]`` the line extrapolates. A sharp minimum shows as a narrow valley around its end.

Only *parameters* are interpolated. BatchNorm running statistics are not parameters: the
activation variance of an interpolated network is not the interpolation of the end networks'
variances, so by default they are recomputed at every ``a`` from training data
(:func:`largebatch.analysis.batchnorm.recompute_bn_stats`). With recomputation off, each point
keeps the running statistics of the nearer end network (A for ``a <= 1/2``, B otherwise), so the
end points are still exactly the two trained networks.

Ranges are written ``START:STOP:NUM`` (``NUM`` points from ``START`` to ``STOP`` inclusive, like
``numpy.linspace``); :func:`parse_range` turns them into lists.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.analysis.batchnorm import has_batchnorm, recompute_bn_stats
from largebatch.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]
RANGE_FORMAT = "START:STOP:NUM, e.g. -1:2:31 (NUM >= 2 points from START to STOP inclusive)"


class RangeFormatError(UserError):
    """A range argument that is not ``START:STOP:NUM``."""


class ModelMismatchError(UserError):
    """Two models that cannot be interpolated (different parameter names or shapes)."""


def parse_range(text: str) -> list[float]:
    """``"start:stop:num"`` -> ``num`` evenly spaced values from start to stop inclusive.

    Raises:
        RangeFormatError: naming the expected format, if ``text`` does not parse, ``num`` is not an
            integer >= 2, or an end is not finite.

    Example:

    >>> parse_range("-1:2:4")
    [-1.0, 0.0, 1.0, 2.0]
    """
    parts = str(text).split(":")
    if len(parts) != 3:
        raise RangeFormatError(f"range {text!r} does not parse; expected {RANGE_FORMAT}")
    try:
        start, stop = float(parts[0]), float(parts[1])
        num = int(parts[2])
    except ValueError:
        raise RangeFormatError(f"range {text!r} does not parse; expected {RANGE_FORMAT}") from None
    if num < 2 or not (math.isfinite(start) and math.isfinite(stop)):
        raise RangeFormatError(f"range {text!r} is not usable; expected {RANGE_FORMAT}")
    step = (stop - start) / (num - 1)
    values = [start + i * step for i in range(num)]
    values[-1] = stop  # exact end point, whatever the rounding of the step
    return values


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise :class:`ModelMismatchError` unless parameters and buffers match in name and shape."""
    for kind, a_items, b_items in (
        ("parameters", model_a.named_parameters(), model_b.named_parameters()),
        ("buffers", model_a.named_buffers(), model_b.named_buffers()),
    ):
        shapes_a = {n: tuple(t.shape) for n, t in a_items}
        shapes_b = {n: tuple(t.shape) for n, t in b_items}
        if shapes_a != shapes_b:
            diff = sorted(set(shapes_a.items()) ^ set(shapes_b.items()))[:3]
            raise ModelMismatchError(
                f"the two models' {kind} differ (e.g. {diff}); interpolate only between runs of "
                "the same model config (model.* keys) on the same data"
            )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Sequence[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` in eval mode over all examples of ``batches``.

    Each batch's mean loss is weighted by its size, so unequal batches give the mean over all
    examples. The model's train/eval flag is restored afterwards.
    """
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for x, y in batches:
            out = model(x)
            total_loss += float(loss_fn(out, y)) * len(y)
            correct += int((out.argmax(dim=1) == y).sum())
            count += len(y)
    finally:
        for m, flag in was_training:
            m.training = flag
    if count == 0:
        raise ValueError("evaluate got no examples")
    return total_loss / count, correct / count


@dataclass
class InterpolationResult:
    alphas: list[float]
    train_loss: list[float]
    train_accuracy: list[float]
    val_loss: list[float]
    val_accuracy: list[float]
    bn_recomputed: bool
    """True when BatchNorm statistics were recomputed at every point (False also for models
    without BatchNorm)."""
    num_train: int
    num_val: int


def interpolate_models(
    model_a: nn.Module,
    model_b: nn.Module,
    alphas: Sequence[float],
    train_batches: Sequence[Batch],
    val_batches: Sequence[Batch],
    *,
    bn_recompute: bool = True,
    bn_batches: Sequence[Batch] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> InterpolationResult:
    """Evaluate ``theta(a) = (1 - a) theta_A + a theta_B`` on training and validation batches.

    Args:
        model_a, model_b: the end networks (same architecture); neither is modified.
        alphas: the values of ``a``.
        train_batches, val_batches: fixed ``(x, y)`` batches to measure loss and accuracy on.
        bn_recompute: recompute BatchNorm running statistics at each point (ignored without BN).
        bn_batches: training batches for the recomputation (default: ``train_batches``).
        loss_fn: per-batch mean loss.

    Returns:
        An :class:`InterpolationResult`, one entry per ``a``.
    """
    check_same_architecture(model_a, model_b)
    recompute = bn_recompute and has_batchnorm(model_a)
    work = copy.deepcopy(model_a)
    params_w = list(work.parameters())
    params_a = [p.detach() for p in model_a.parameters()]
    params_b = [p.detach() for p in model_b.parameters()]
    buffers_w = list(work.buffers())
    buffers_a = [b.detach().clone() for b in model_a.buffers()]
    buffers_b = [b.detach().clone() for b in model_b.buffers()]
    out = InterpolationResult([], [], [], [], [], recompute, 0, 0)
    for a in alphas:
        with torch.no_grad():
            for pw, pa, pb in zip(params_w, params_a, params_b, strict=True):
                pw.copy_((1.0 - a) * pa + a * pb)
            if not recompute:
                for bw, source in zip(buffers_w, buffers_a if a <= 0.5 else buffers_b, strict=True):
                    bw.copy_(source)
        if recompute:
            recompute_bn_stats(work, bn_batches if bn_batches is not None else train_batches)
        train_loss, train_acc = evaluate(work, train_batches, loss_fn)
        val_loss, val_acc = evaluate(work, val_batches, loss_fn)
        out.alphas.append(float(a))
        out.train_loss.append(train_loss)
        out.train_accuracy.append(train_acc)
        out.val_loss.append(val_loss)
        out.val_accuracy.append(val_acc)
    out.num_train = sum(len(y) for _, y in train_batches)
    out.num_val = sum(len(y) for _, y in val_batches)
    return out
