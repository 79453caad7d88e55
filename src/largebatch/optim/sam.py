"""Sharpness-aware optimizers: SAM, m-SAM and Momentum-SAM, each a wrapper over any optimizer.

**SAM** (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization"). With ``g = grad L(theta)`` on the batch::

    e      = rho * g / |g|              (normalize=True; |g| the L2 norm over all parameters)
    e      = rho * g                    (normalize=False: e = r g, see below)
    g_SAM  = grad L(theta + e)          (the same batch, a second forward-backward)
    theta <- base_step(theta, g_SAM)    (applied at theta, not at theta + e)

**m-SAM** (Foret et al.'s m-sharpness; Andriushchenko & Flammarion 2022): a batch of ``k``
micro-batches of ``m`` examples, each perturbed by its *own* gradient ``g_j = grad L_j(theta)``::

    g_mSAM = (1/k) sum_j grad L_j(theta + e_j),     e_j = rho g_j / |g_j|   (or r g_j)

:meth:`SAM.microbatch` runs one micro-batch of it (two passes). Under DDP the "micro-batch" of
:meth:`SAM.step` is the rank's own batch: pass the DDP model as ``model`` and the first pass runs
inside ``model.no_sync()`` (the perturbation comes from the rank's gradient, not the average),
the second pass all-reduces once.

**The unnormalised form** is a finite difference of the micro-batch gradient-norm penalty:
``grad L_j(theta + r g_j) = g_j + r H_j g_j + O(r^2) = grad [L_j + (r/2) |g_j|^2] + O(r^2)``, so
with ``r = lambda / 2`` m-SAM minimises ``L + lambda/(4k) sum_j |grad L_j|^2`` to first order in
two passes, without a double backward (so under DDP and ``torch.compile`` too). Here ``g`` is the
gradient of the loss the closure backpropagates divided by ``loss_scale``: pass
``loss_scale=1/k`` when each micro-batch's loss is divided by ``k``, or a GradScaler's scale.

**Momentum-SAM** (Becker, Altrock & Risse 2024, TMLR, "Momentum-SAM: Sharpness Aware
Minimization without Computational Overhead"). ``v`` is the base optimizer's momentum buffer
(torch SGD's ``momentum_buffer``: ``v <- mu v + g + wd theta``, ``theta <- theta - lr v``; Adam's
``exp_avg``). The gradient is taken at::

    theta~ = theta - rho * v / |v|       (|v| over all parameters; v = 0 at the first update:
                                          no perturbation, the base optimizer's step exactly)

a step of length ``rho`` where the momentum is heading (the authors' ``move_up_to_momentumAscent``
subtracts ``rho v / |v|``), and applied at ``theta``: one forward-backward, nothing extra to
communicate under DDP (``v`` is the same on every rank). BatchNorm statistics come from that one
(perturbed) pass.

In every form the weights are restored by a copy (bit-exact), BatchNorm running statistics are
updated once per update (by the unperturbed pass; pass ``model``), and the state is the base
optimizer's (``state_dict()`` is the base's, plus this wrapper's settings under
``"sharpness"``). The adaptive variant (ASAM) is not carried: its point is invariance to
per-filter weight rescaling, which BatchNorm networks trained with weight decay already handle;
nothing measured here asked for it.

Example (SAM on least squares, ``L = |w - t|^2 / 2``: the gradient at ``w + rho g/|g|``)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> t = torch.tensor([3.0, 4.0])
    >>> opt = SAM(torch.optim.SGD([w], lr=1.0), rho=0.5)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = (w - t).pow(2).sum() / 2
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)    # g = -t, e = -0.5 t / 5, g_SAM = e - t = -1.1 t
    >>> [round(v, 4) for v in w.tolist()]
    [3.3, 4.4]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from largebatch.optim.perturbation import (
    Perturbation,
    ascent_scale,
    batchnorm_modules,
    frozen_batchnorm,
)

Closure = Callable[[], Any]


class _Wrapper(torch.optim.Optimizer):
    """An optimizer that delegates its update to ``base`` and shares its groups and state."""

    kind = "wrapper"

    def __init__(self, base: torch.optim.Optimizer, rho: float, model: nn.Module | None) -> None:
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        if not isinstance(rho, int | float) or not 0 <= rho < float("inf"):
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
        self.rho = float(rho)
        self.model = model
        self._move = Perturbation()
        super().__init__(base.param_groups, dict(base.defaults))
        self.base = base
        self._share()

    def _share(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _sync_context(self, sync: bool) -> contextlib.AbstractContextManager:
        """``model.no_sync()`` when ``model`` is a DDP module and this pass must not reduce."""
        no_sync = getattr(self.model, "no_sync", None)
        return contextlib.nullcontext() if sync or no_sync is None else no_sync()

    def _frozen_bn(self) -> contextlib.AbstractContextManager:
        if self.model is None:
            return contextlib.nullcontext()
        return frozen_batchnorm(batchnorm_modules(self.model))

    def restore(self) -> None:
        """Put the weights back at ``theta`` (nothing when they are not perturbed)."""
        self._move.restore_()

    @property
    def perturbed(self) -> bool:
        return self._move.active

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        out = self.base.state_dict()
        out["sharpness"] = {"kind": self.kind, "rho": self.rho, **self._extra_state()}
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        mine = state_dict.pop("sharpness", None)
        if mine is not None and mine.get("kind") != self.kind:
            raise ValueError(
                f"this state is a {mine.get('kind')} optimizer's; load it into that kind, "
                f"not {self.kind}"
            )
        self.base.load_state_dict(state_dict)
        self._share()
        if mine is not None:
            self.rho = float(mine["rho"])
            self._load_extra_state(mine)

    def _load_extra_state(self, mine: dict[str, Any]) -> None:
        pass

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "base"):
            self.base.add_param_group(param_group)
            self._share()
        else:  # torch.optim.Optimizer.__init__ registering the base's groups
            super().add_param_group(param_group)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rho={self.rho}, base={self.base!r})"


class SAM(_Wrapper):
    """Sharpness-aware minimization over any ``base`` optimizer (see the module docstring).

    Args:
        base: the optimizer that makes the update (SGD, LARS, AdamW, ...), built over the model's
            parameters.
        rho: the radius (weights units; normalised form) or ``r`` (unnormalised form).
        normalize: ``e = rho g / |g|`` (True, SAM) or ``e = rho g`` (False, the
            gradient-norm penalty's finite difference with ``lambda = 2 rho``).
        model: the model (or its DDP wrapper). BatchNorm running statistics are frozen during
            the perturbed pass; a DDP model's first pass runs inside ``no_sync()``.

    Three ways to drive it:

    - ``step(closure)`` (torch's convention for re-evaluating optimizers; Lightning's automatic
      optimization): the closure zeroes the gradients, runs forward and backward and returns the
      loss; it is called twice, the loss at ``theta`` is returned.
    - By hand: ``loss.backward(); opt.first_step(); loss_at_perturbed.backward(); opt.step()``
      (``step()`` restores ``theta`` first). With a ``GradScaler``: ``opt.restore()`` before
      ``scaler.step(opt)`` (a skipped step must not leave the weights perturbed) and
      ``first_step(loss_scale=scaler.get_scale())`` in the unnormalised form.
    - m-SAM over micro-batches: ``opt.microbatch(closure_j, last=...)`` for each, then
      ``opt.step()``; the closures backpropagate their share of the loss and do *not* zero the
      gradients.
    """

    kind = "sam"

    def __init__(
        self,
        base: torch.optim.Optimizer,
        rho: float = 0.05,
        normalize: bool = True,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(base, rho, model)
        self.normalize = bool(normalize)

    def _extra_state(self) -> dict[str, Any]:
        return {"normalize": self.normalize}

    def _load_extra_state(self, mine: dict[str, Any]) -> None:
        self.normalize = bool(mine.get("normalize", self.normalize))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True, loss_scale: float = 1.0) -> None:
        """``theta <- theta + e`` from the gradients now in ``p.grad``; then zero them."""
        pairs = [(p, p.grad) for p in self._params() if p.grad is not None]
        grads = [g for _, g in pairs]
        scale = ascent_scale(grads, self.rho, self.normalize, loss_scale)
        self._move.apply_([p for p, _ in pairs], grads, scale)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:
        """With a closure: the whole SAM update, returning the loss at ``theta``. Without: restore
        ``theta`` if perturbed and apply the gradients in ``p.grad`` with the base optimizer."""
        if closure is None:
            self.restore()
            return self.base.step()
        with torch.enable_grad(), self._sync_context(sync=False):
            loss = closure()
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad(), self._frozen_bn():
                closure()
        finally:
            self.restore()
        self.base.step()
        return loss

    def microbatch(self, closure: Closure, last: bool = True, loss_scale: float = 1.0) -> Any:
        """One micro-batch of m-SAM: its own gradient ``g_j`` at ``theta`` (kept apart from the
        running sum in ``p.grad``), then ``grad L_j(theta + e_j)`` added to that sum.

        ``closure`` runs forward and backward of this micro-batch's share of the loss (e.g. its
        mean over ``k``: pass ``loss_scale=1/k`` for the unnormalised form) and returns the loss.
        ``last``: under DDP the perturbed pass of the last micro-batch all-reduces the sum.
        """
        params = self._params()
        running = [p.grad for p in params]
        for p in params:
            p.grad = None
        with torch.enable_grad(), self._sync_context(sync=False):
            loss = closure()
        own = [(p, p.grad) for p in params if p.grad is not None]
        directions = [g for _, g in own]
        scale = ascent_scale(directions, self.rho, self.normalize, loss_scale)
        for p, g in zip(params, running, strict=True):
            p.grad = g
        self._move.apply_([p for p, _ in own], directions, scale)
        try:
            with torch.enable_grad(), self._frozen_bn(), self._sync_context(sync=last):
                closure()
        finally:
            self.restore()
        return loss


def momentum_buffers(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(parameter, v)`` for every parameter whose momentum buffer exists (``momentum_buffer``:
    SGD, LARS; ``exp_avg``: Adam, AdamW)."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            v = state.get("momentum_buffer", state.get("exp_avg"))
            if isinstance(v, torch.Tensor):
                out.append((p, v))
    return out


class MomentumSAM(_Wrapper):
    """Momentum-SAM over a base optimizer with momentum (see the module docstring): the gradient
    at ``theta - rho v / |v|``, no extra pass.

    Drive it with ``step(closure)`` (the closure is called once, at the perturbed point), or by
    hand: ``opt.perturb()`` before the forward, then ``loss.backward(); opt.step()`` (``step``
    restores ``theta`` before the base step). ``model``: the model, for nothing but symmetry with
    :class:`SAM` (the one pass updates BatchNorm statistics once).

    Example::

        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = MomentumSAM(torch.optim.SGD([w], lr=0.1, momentum=0.9), rho=0.1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = (w - 1).pow(2).sum()
        ...     loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)       # v = 0: exactly SGD's first step
        >>> [round(v, 4) for v in w.tolist()]
        [0.2, 0.2]
    """

    kind = "momentum_sam"

    def __init__(
        self, base: torch.optim.Optimizer, rho: float = 0.3, model: nn.Module | None = None
    ) -> None:
        super().__init__(base, rho, model)

    @torch.no_grad()
    def perturb(self) -> None:
        """``theta <- theta - rho v / |v|`` (nothing while no momentum buffer exists)."""
        pairs = momentum_buffers(self.base)
        if not pairs or self.rho == 0:
            return
        buffers = [v for _, v in pairs]
        scale = -ascent_scale(buffers, self.rho, normalize=True)
        self._move.apply_([p for p, _ in pairs], buffers, scale)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:
        """With a closure: perturb, one forward-backward, restore, base step; returns the loss at
        the perturbed point. Without: restore (if perturbed) and base step."""
        if closure is None:
            self.restore()
            return self.base.step()
        self.perturb()
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            self.restore()
        self.base.step()
        return loss

    @contextlib.contextmanager
    def perturbed_forward(self) -> Iterator[None]:
        """``with opt.perturbed_forward(): loss.backward()`` then ``opt.step()``: the by-hand form
        with the restore guaranteed."""
        self.perturb()
        try:
            yield
        finally:
            self.restore()
