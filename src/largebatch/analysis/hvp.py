"""A matrix-free Hessian operator of the training loss over a fixed set of samples.

For a network with trainable parameters ``theta`` (flattened into one vector of length ``P``) and
fixed mini-batches ``B_1, ..., B_m`` holding ``N = sum_b |B_b|`` examples in all, the loss is the
average over all ``N`` examples,

    L(theta) = sum_b (|B_b| / N) * L_b(theta),   L_b = (1 / |B_b|) sum_{i in B_b} l(f(x_i), y_i),

so batches of unequal size sum to exactly the loss of their concatenation. The operator never
forms the ``P x P`` Hessian ``H = d^2 L / d theta^2``; it computes Hessian-vector products by
double backward (Pearlmutter's trick), one batch at a time:

    H v = sum_b (|B_b| / N) * d/d theta [ (d L_b / d theta) . v ],

at the cost of about one forward and two backward passes per batch. BatchNorm mode is explicit
(see :mod:`largebatch.analysis.batchnorm`), dropout is off, and the model's parameters, buffers,
``.grad`` fields and train/eval flags are exactly what they were after every call.

Example (with a run's data: ``fixed_batches(run.data.train, 2048, 512, seed=0)``):

>>> model = torch.nn.Linear(3, 2)  # P = 3 * 2 + 2 = 8 parameters
>>> x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
>>> op = HessianOperator(model, [(x[:4], y[:4]), (x[4:], y[4:])], bn_mode="eval")
>>> op.matvec(torch.randn(op.dim)).shape, op.num_samples
(torch.Size([8]), 10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from largebatch.analysis.batchnorm import bn_mode, check_bn_mode, preserved_buffers
from largebatch.data.base import Split

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(outputs, targets) -> scalar``, the *mean* over the batch (e.g. ``F.cross_entropy``)."""


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector (a copy), in order."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into views shaped like ``like`` (the inverse of :func:`flatten`)."""
    total = sum(t.numel() for t in like)
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(
            f"expected a flat vector of {total} entries, got shape {tuple(vector.shape)}"
        )
    out, offset = [], 0
    for t in like:
        out.append(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def trainable_parameters(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and tensors of the parameters that require gradients, in ``named_parameters`` order."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def fixed_batches(
    split: Split, num_samples: int, batch_size: int, seed: int
) -> tuple[list[Batch], torch.Tensor]:
    """A seeded random subset of a data split, cut into fixed batches.

    Args:
        split: a :class:`largebatch.data.Split` (``len(split)``, ``split.get_batch(indices)``).
        num_samples: examples wanted; all of the split if it has fewer.
        batch_size: examples per batch (the last batch may be smaller).
        seed: seeds the permutation, so the same ``(num_samples, seed)`` gives the same samples.

    Returns:
        ``(batches, indices)``: the list of ``(x, y)`` on the split's device, and the indices used.
    """
    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"num_samples and batch_size must be > 0, got {num_samples}, {batch_size}")
    n = len(split)
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=generator)[: min(num_samples, n)]
    batches = [split.get_batch(chunk) for chunk in indices.split(batch_size)]
    return batches, indices


class HessianOperator:
    """``v -> H v`` for the mean loss of ``model`` over a fixed list of batches.

    Args:
        model: the network; its current parameters are the point ``theta`` of the Hessian.
        batches: fixed ``(x, y)`` batches, possibly of different sizes.
        loss_fn: per-batch mean loss; cross-entropy by default.
        bn_mode: ``"eval"`` (running statistics, default) or ``"train"`` (batch statistics, running
            statistics not updated).

    Attributes:
        dim: ``P``, the number of trainable parameters.
        num_samples: ``N``, the number of examples over all batches.
        num_matvecs: Hessian-vector products computed so far (a cost counter).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        loss_fn: LossFn = F.cross_entropy,
        bn_mode: str = "eval",
    ) -> None:
        if not batches:
            raise ValueError("HessianOperator needs at least one (x, y) batch")
        self.model = model
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.bn_mode = check_bn_mode(bn_mode)
        self.names, self.params = trainable_parameters(model)
        if not self.params:
            raise ValueError("the model has no parameters that require gradients")
        self.dim = sum(p.numel() for p in self.params)
        self.num_samples = sum(len(y) for _, y in self.batches)
        self.weights = [len(y) / self.num_samples for _, y in self.batches]
        self.num_matvecs = 0
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device

    def parameters_vector(self) -> torch.Tensor:
        """``theta`` as a flat copy (detached)."""
        return flatten([p.detach() for p in self.params])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v``, returned with ``v``'s dtype and device (computed in the model's dtype)."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must have shape ({self.dim},), got {tuple(v.shape)}")
        vs = unflatten(v.to(self.device, self.dtype), self.params)
        total = [torch.zeros_like(p) for p in self.params]
        with bn_mode(self.model, self.bn_mode), preserved_buffers(self.model):
            for (x, y), weight in zip(self.batches, self.weights, strict=True):
                loss = self.loss_fn(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True))
                hv = torch.autograd.grad(dot, self.params)
                torch._foreach_add_(total, [h.detach() for h in hv], alpha=weight)
        self.num_matvecs += 1
        return flatten(total).to(v.device, v.dtype)

    __call__ = matvec

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """``(L(theta), grad L(theta))`` at the model's current parameters."""
        return self.loss_and_gradient_at(None)

    def gradient(self) -> torch.Tensor:
        """``grad L(theta)`` as a flat vector."""
        return self.loss_and_gradient()[1]

    def loss(self) -> float:
        return self.loss_and_gradient()[0]

    def loss_and_gradient_at(self, theta: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """Loss and flat gradient at the parameter vector ``theta`` (None: the model's own).

        The model is not modified: other parameters are substituted with
        ``torch.func.functional_call``. The gradient comes back in ``theta``'s dtype and device.
        """
        if theta is None:
            tensors: list[torch.Tensor] = list(self.params)
            out_dtype, out_device = self.dtype, self.device
        else:
            if theta.shape != (self.dim,):
                raise ValueError(f"theta must have shape ({self.dim},), got {tuple(theta.shape)}")
            out_dtype, out_device = theta.dtype, theta.device
            leaf = theta.detach().to(self.device, self.dtype).requires_grad_(True)
            tensors = unflatten(leaf, self.params)
        total_loss = 0.0
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with bn_mode(self.model, self.bn_mode), preserved_buffers(self.model):
            for (x, y), weight in zip(self.batches, self.weights, strict=True):
                if theta is None:
                    outputs = self.model(x)
                    wrt: list[torch.Tensor] = list(self.params)
                else:
                    replaced = dict(zip(self.names, tensors, strict=True))
                    outputs = functional_call(self.model, replaced, (x,))
                    wrt = [leaf]
                loss = self.loss_fn(outputs, y)
                grads = torch.autograd.grad(loss, wrt)
                total.add_(flatten([g.detach() for g in grads]), alpha=weight)
                total_loss += weight * loss.item()
        return total_loss, total.to(out_device, out_dtype)
