"""What a gradient transform is told about the update it acts on, and what ``attach`` needs.

:class:`UpdateInfo` is passed to every hook of a
:class:`~largebatch.gradient.base.GradientTransform`.
:class:`Attachable` and :class:`Chain` are the structural types :mod:`largebatch.gradient.attach`
works with (a :class:`~largebatch.gradient.base.TransformChain` is a ``Chain``); they live here so
that ``attach`` does not import the classes whose ``attach()`` method calls it.

Example::

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> info = UpdateInfo(step=3, lr=0.1, param_lrs={id(p): 0.05})
    >>> info.lr_of(p), info.lr_of(torch.zeros(1))
    (0.05, 0.1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class UpdateInfo:
    """What a transform may know about the update it acts on.

    Attributes:
        step: ``t``, the number of completed optimizer updates before this one (first: 0).
        lr: the learning rate of this update (after scaling, warmup and decay); with parameter
            groups of different learning rates, group 0's.
        param_lrs: ``id(param) -> lr`` of the parameter's group when the optimizer's groups
            have different learning rates (``attach`` fills it), else ``None``: every parameter
            then steps with ``lr``. Read it through :meth:`lr_of`.
    """

    step: int
    lr: float
    param_lrs: Mapping[int, float] | None = field(default=None, compare=False, repr=False)

    def lr_of(self, param: torch.Tensor) -> float:
        """The learning rate ``param`` steps with in this update (its group's)."""
        if self.param_lrs is None:
            return self.lr
        return self.param_lrs.get(id(param), self.lr)


class Attachable(Protocol):
    """A transform or a chain of them: what ``attach`` accepts."""

    def as_chain(self) -> Chain: ...


class Chain(Protocol):
    """Transforms run in list order around ``optimizer.step`` (what ``attach`` drives)."""

    @property
    def transforms(self) -> list[Any]: ...

    @property
    def order(self) -> list[str]: ...

    def acts_per_microbatch(self) -> list[str]: ...

    def before_step(self, info: UpdateInfo) -> None: ...

    def after_step(self, info: UpdateInfo) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
