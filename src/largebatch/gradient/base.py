"""The protocol every gradient transform follows, and the chain that runs them in order.

A transform owns a list of parameters (``self.params``, fixed when it is built) and acts **in
place** on their gradients for one optimizer update (one tensor per parameter, in that order;
``None`` where a parameter has no gradient),
between the last backward (after accumulation and the DDP all-reduce) and ``optimizer.step()``.
Transforms with ``stage = "update"`` act instead on the weights right after ``optimizer.step()``
(the gradient noise with ``placement = update``).

Every transform has explicit state (``state_dict`` / ``load_state_dict``) so that a resumed run
continues exactly; a stateless transform returns ``{}``. Those two methods make every transform
(and :class:`~largebatch.gradient.attach.AttachHandle`) a ``Stateful`` of
``torch.distributed.checkpoint``: ``dcp.save({"model": ..., "noise": noise}, ...)`` saves it.

Transforms that need more than the final gradient get it through optional hooks, which the
engine's update function (:mod:`largebatch.engine.update`) calls and a user's own loop may call:

- ``begin_update(num_microbatches, info)`` before the first micro-batch of an update;
- ``after_microbatch(index, grads)`` after each micro-batch's backward, with the running sums of
  the gradients so far (``p.grad``) -- the micro-batch covariance kinds read them;
- ``loss_weights(num_examples, device, info)`` per-example loss weights for the micro-batch about
  to run, or ``None`` (the multiplicative noise kind).

``transform.attach(optimizer)`` (and ``chain.attach(optimizer)``) runs a transform inside any
``torch.optim`` optimizer's ``step`` -- plain, with a closure, under ``torch.amp.GradScaler`` --
with its state in ``optimizer.state_dict()``, restored by ``optimizer.load_state_dict`` whether
that runs before or after ``attach`` (:mod:`largebatch.gradient.attach`). Such a transform sees
``UpdateInfo.lr`` = group 0's learning rate and, when the groups differ, each parameter's own
through ``info.lr_of(param)``.

Example::

    >>> import torch
    >>> from largebatch.gradient.base import GradientTransform, TransformChain, UpdateInfo
    >>> class Double(GradientTransform):
    ...     name = "double"
    ...     def __init__(self, params):
    ...         self.params = list(params)
    ...     def apply_(self, grads, info):
    ...         torch._foreach_mul_([g for g in grads if g is not None], 2.0)
    >>> w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)
    >>> chain = TransformChain([Double([w])])
    >>> chain.before_step(UpdateInfo(step=0, lr=0.1))
    >>> w.grad.tolist()
    [2.0, 2.0, 2.0]
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from largebatch.gradient.attach import AttachHandle, attach
from largebatch.gradient.info import UpdateInfo

__all__ = ["STAGES", "GradientTransform", "TransformChain", "UpdateInfo"]


STAGES = ("gradient", "update")


class GradientTransform:
    """Base class: set ``self.params``; override :meth:`apply_` (and the hooks you need)."""

    name: ClassVar[str] = "transform"
    stage: str = "gradient"
    params: list[torch.nn.Parameter]

    def apply_(self, grads: list[torch.Tensor | None], info: UpdateInfo) -> None:
        """Change ``grads`` in place (stage ``gradient``) or the weights (stage ``update``)."""
        raise NotImplementedError

    # Optional hooks; the defaults do nothing.
    def begin_update(self, num_microbatches: int, info: UpdateInfo) -> None:
        return None

    def after_microbatch(self, index: int, grads: list[torch.Tensor | None]) -> None:
        return None

    def loss_weights(
        self, num_examples: int, device: torch.device, info: UpdateInfo
    ) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def attach(
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None
    ) -> AttachHandle:
        """Run this transform once per ``optimizer.step`` (plain, closure, GradScaler,
        accumulation) with its state in ``optimizer.state_dict()``; see
        :func:`largebatch.gradient.attach.attach`. ``handle.remove()`` detaches."""
        return attach(self, optimizer, scaler)

    def as_chain(self) -> TransformChain:
        """This transform alone, as a chain (what :func:`~largebatch.gradient.attach.attach`
        runs)."""
        return TransformChain([self])


class TransformChain:
    """Runs a list of transforms in list order; the list *is* the documented order.

    Each transform receives the gradients (or, at stage ``update``, the weights) of its own
    ``params``.

    Args:
        transforms: the transforms, in the order they act.
    """

    def __init__(self, transforms: list[GradientTransform]):
        names = [t.name for t in transforms]
        if len(set(names)) != len(names):
            raise ValueError(f"transform names must be unique in a chain, got {names}")
        for t in transforms:
            if t.stage not in STAGES:
                raise ValueError(f"transform {t.name}: stage '{t.stage}' is not one of {STAGES}")
        self.transforms = list(transforms)

    def as_chain(self) -> TransformChain:
        return self

    def acts_per_microbatch(self) -> list[str]:
        """Names of the transforms that override ``after_microbatch`` or ``loss_weights`` (they
        need the engine's micro-batch loop, so ``attach`` refuses them)."""
        base = GradientTransform
        return [
            t.name
            for t in self.transforms
            if type(t).after_microbatch is not base.after_microbatch
            or type(t).loss_weights is not base.loss_weights
        ]

    @property
    def order(self) -> list[str]:
        """The names of the transforms in the order they act."""
        return [t.name for t in self.transforms]

    def get(self, name: str) -> GradientTransform | None:
        return next((t for t in self.transforms if t.name == name), None)

    def begin_update(self, num_microbatches: int, info: UpdateInfo) -> None:
        for t in self.transforms:
            t.begin_update(num_microbatches, info)

    def after_microbatch(self, index: int) -> None:
        for t in self.transforms:
            t.after_microbatch(index, [p.grad for p in t.params])

    def loss_weights(
        self, num_examples: int, device: torch.device, info: UpdateInfo
    ) -> torch.Tensor | None:
        weights = None
        for t in self.transforms:
            w = t.loss_weights(num_examples, device, info)
            if w is not None:
                weights = w if weights is None else weights * w
        return weights

    def before_step(self, info: UpdateInfo) -> None:
        for t in self.transforms:
            if t.stage == "gradient":
                t.apply_([p.grad for p in t.params], info)

    def after_step(self, info: UpdateInfo) -> None:
        for t in self.transforms:
            if t.stage == "update":
                t.apply_([p.data for p in t.params], info)

    def state_dict(self) -> dict[str, Any]:
        return {t.name: t.state_dict() for t in self.transforms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for t in self.transforms:
            if t.name in state:
                t.load_state_dict(state[t.name])

    def attach(
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None
    ) -> AttachHandle:
        """Run the chain, in order, once per ``optimizer.step``; see
        :func:`largebatch.gradient.attach.attach`."""
        return attach(self, optimizer, scaler)
