"""The micro-batch gradient-norm penalty in your own loop: the engine's ``optim.grad_penalty``.

For a micro-batch with mean loss ``L_j`` (Smith et al. 2021, "On the origin of implicit
regularization in stochastic gradient descent"; Geiping et al. 2022, "Stochastic training is
not necessary for generalization") the objective gains a penalty on its gradient's norm::

    L_j + (lambda / 4) |grad L_j|^2          (its gradient: g_j + (lambda / 2) H_j g_j)

so an update over ``k`` equal micro-batches minimises ``L + lambda/(4k) sum_j |grad L_j|^2``, the
implicit regulariser of SGD at micro-batches of that size made explicit. Two forms, as the
engine's ``optim.grad_penalty_form``:

- ``double_backward`` (exact): the gradient of the objective above, by a backward through
  ``grad L_j`` (``create_graph=True``); about 2-3x a plain pass. Not under DDP (its all-reduce
  does not follow a double backward) nor ``torch.compile``.
- ``finite_difference``: the gradient at ``theta + e_j``, ``e_j = (lambda / 2) g_j``
  (unnormalised m-SAM), applied at ``theta``::

      grad L_j(theta + (lambda/2) g_j) = g_j + (lambda/2) H_j g_j + O(lambda^2)

  the same gradient to first order in two passes without a double backward (exact when the loss
  is quadratic). The first pass's gradient is taken with ``torch.autograd.grad`` (``p.grad`` is
  untouched; a DDP ``model`` runs it inside ``no_sync()``), the weights are moved by ``e_j`` and
  restored by a copy (bit-exact), and BatchNorm running statistics are frozen during the perturbed
  pass (pass ``model``): they are updated once, by the pass at ``theta``.

:func:`gradient_norm_penalty` adds ``scale`` times the penalised gradient of one micro-batch to
``p.grad`` (accumulating, like ``backward``), then you step the optimizer. With ``k`` micro-batches
per update, ``scale=1/k`` makes the sum the engine's update (``tests/test_penalty.py`` checks it
against :func:`largebatch.engine.update.optimizer_update`).

Example (least squares, ``L = |w - t|^2 / 2``: ``g = w - t``, ``H = I``, so the penalised
gradient is ``(1 + lambda/2) g`` in both forms)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> t = torch.tensor([1.0, 2.0])
    >>> loss = gradient_norm_penalty(lambda: (w - t).pow(2).sum() / 2, [w], lam=0.5)
    >>> w.grad.tolist()                       # (1 + 0.25) * (w - t)
    [-1.25, -2.5]
    >>> w.grad = None
    >>> _ = gradient_norm_penalty(lambda: (w - t).pow(2).sum() / 2, [w], lam=0.5,
    ...                           form="finite_difference")
    >>> w.grad.tolist(), w.tolist()           # the same; the weights are back at theta
    ([-1.25, -2.5], [0.0, 0.0])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from largebatch.optim.perturbation import Perturbation, batchnorm_modules, frozen_batchnorm

FORMS = ("double_backward", "finite_difference")
"""The penalty's forms, as the engine's ``optim.grad_penalty_form``."""


def penalty_term(loss: torch.Tensor, params: list[torch.Tensor], lam: float) -> torch.Tensor:
    """``(lambda / 4) |grad loss|^2``, differentiable (``create_graph=True``): add it to the loss
    before ``backward`` for the double-backward form."""
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    squares = [g.pow(2).sum() for g in grads if g is not None]
    return lam / 4 * torch.stack(squares).sum() if squares else loss.new_zeros(())


def gradient_norm_penalty(
    loss_fn: Callable[[], torch.Tensor],
    params: Iterable[torch.Tensor],
    lam: float,
    form: str = "double_backward",
    scale: float = 1.0,
    model: nn.Module | None = None,
) -> torch.Tensor:
    """Add ``scale * grad [L + (lam/4) |grad L|^2]`` (or its finite difference) to ``p.grad``.

    Args:
        loss_fn: runs the forward of one micro-batch and returns its mean loss ``L`` (a scalar);
            it must not call ``backward``. The finite-difference form calls it twice.
        params: the parameters the penalty differentiates (those the optimizer steps).
        lam: ``lambda`` (the engine's ``optim.grad_penalty``), >= 0.
        form: ``double_backward`` or ``finite_difference`` (see the module docstring).
        scale: multiplies what is added to ``p.grad``: ``1/k`` for ``k`` accumulated
            micro-batches, so the update's gradient is their mean.
        model: the model (or its DDP wrapper), for the finite-difference form: BatchNorm
            statistics are frozen in the perturbed pass, and a DDP model's first pass runs in
            ``no_sync()`` (its second pass all-reduces: call the last micro-batch outside
            ``no_sync()``, the others inside, as with a plain backward).

    Returns:
        ``L`` at ``theta`` (detached).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    params = [p for p in params if p.requires_grad]
    if form == "double_backward":
        loss = loss_fn()
        objective = loss + penalty_term(loss, params, lam) if lam else loss
        (objective * scale).backward()
        return loss.detach()
    no_sync = getattr(model, "no_sync", None)
    with no_sync() if no_sync is not None else contextlib.nullcontext():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    move = Perturbation()
    move.apply_([p for p, _ in pairs], [g for _, g in pairs], lam / 2)
    frozen = frozen_batchnorm(batchnorm_modules(model)) if model is not None else None
    try:
        with frozen if frozen is not None else contextlib.nullcontext():
            (loss_fn() * scale).backward()
    finally:
        move.restore_()
    return loss.detach()
