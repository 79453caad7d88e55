"""Annealed Gaussian gradient noise: the method of Jaiswal & Taura, "Overcoming Generalization
Gap in Large Mini-Batch Training of Deep Neural Networks".

Before optimizer update ``t`` (``t`` = number of completed updates, so the first update uses
``t = 0``), every selected gradient gets white noise::

    g_t  <-  g_t + n_t,        n_t ~ N(0, sigma_t^2 I),        sigma_t^2 = alpha / (1 + t)^gamma

``alpha`` is a *variance* (the standard deviation is ``sqrt(alpha / (1 + t)^gamma)``); the paper
uses ``alpha = 1e-5`` and ``gamma = 0.55``, together with the linear LR scaling rule. The noise is
meant for the final averaged gradient of an update: after gradient accumulation, after the DDP
all-reduce, after AMP unscaling, and before weight decay and momentum, so the optimizer's learning
rate multiplies it like any gradient and momentum accumulates it.

The noise is drawn from the transform's own ``torch.Generator`` on the parameters' device, never
from the global RNG: seeded identically on every rank, it draws identical noise everywhere and the
DDP replicas stay equal. Its state (``t`` and the generator state) is in :meth:`state_dict`, so a
resumed run draws exactly the noise the uninterrupted run would have drawn. Attached, that state
rides in ``optimizer.state_dict()`` and is restored by ``optimizer.load_state_dict`` run before or
after ``attach`` (:mod:`largebatch.gradient.attach`); the transform is also a
``torch.distributed.checkpoint`` ``Stateful``.

With ``placement="update"`` the noise goes on the weights after the step, scaled by the learning
rate of each weight's parameter group::

    w  <-  w - lr_g sigma_t n_t,       Var = lr_g^2 alpha / (1 + t)^gamma   per entry of group g

Cost: one ``normal_`` over a flat buffer holding every selected element, and one
``torch._foreach_add_`` over views of that buffer; the standard deviation is a host float, so there
is no host-device synchronisation.

Example (three lines in your own loop)::

    >>> import torch
    >>> from largebatch import GradientNoise
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> noise = GradientNoise(model.parameters(), alpha=1e-5, gamma=0.55, seed=0)
    >>> handle = noise.attach(opt)          # adds noise inside every opt.step()
    >>> model(torch.randn(8, 4)).pow(2).mean().backward()
    >>> opt.step()
    >>> noise.t
    1
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from largebatch.gradient.base import GradientTransform, UpdateInfo


def noise_variance(alpha: float, gamma: float, t: int) -> float:
    """``sigma_t^2 = alpha / (1 + t)^gamma`` for update ``t`` (first update: ``t = 0``)."""
    return alpha / (1.0 + t) ** gamma


def is_bias_or_norm(p: nn.Parameter) -> bool:
    """Biases and normalisation scales/shifts are the parameters with at most one dimension."""
    return p.ndim <= 1


class GradientNoise(GradientTransform):
    """Adds ``N(0, alpha / (1 + t)^gamma)`` to every selected gradient, once per update.

    As a transform of the engine's chain (:mod:`largebatch.gradient.base`) it has stage
    ``gradient`` (the paper) or ``update`` (``placement="update"``: ``w -= lr_g sigma_t n_t``
    right after ``optimizer.step()``, ``lr_g`` the learning rate of the weight's own parameter
    group, so each entry gets variance ``lr_g^2 sigma_t^2`` and momentum never accumulates the
    noise).

    Args:
        params: the parameters whose gradients get noise (e.g. ``model.parameters()``).
        alpha: variance at ``t = 0`` (not a standard deviation). 0 disables the transform: the
            gradients are then left bit-identical.
        gamma: decay exponent of the variance.
        seed: seed of the transform's own generator; use the same on every rank.
        include_bias_and_norm: False leaves out parameters with ``ndim <= 1``.
        placement: ``gradient`` (added to the gradient before ``step``) or ``update`` (added to
            the weights after ``step``, times ``-lr``).
    """

    name = "noise"

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        alpha: float = 1e-5,
        gamma: float = 0.55,
        seed: int = 0,
        include_bias_and_norm: bool = True,
        placement: str = "gradient",
    ) -> None:
        if not (math.isfinite(alpha) and alpha >= 0):  # refuses nan and inf too
            raise ValueError(
                f"alpha is a variance and must be a finite number >= 0 (e.g. 1e-5; 0 = off), "
                f"got {alpha}"
            )
        if placement not in ("gradient", "update"):
            raise ValueError(f"placement '{placement}' is not one of: gradient, update")
        self.stage = placement
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(
                f"gamma is the variance's decay exponent and must be a finite number >= 0 "
                f"(e.g. 0.55; 0 = no decay), got {gamma}"
            )
        params = [p for p in params if p.requires_grad]
        if not include_bias_and_norm:
            params = [p for p in params if not is_bias_or_norm(p)]
        if not params:
            raise ValueError("GradientNoise got no parameters that require gradients")
        self.params = params
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.seed = int(seed)
        self.t = 0
        device = params[0].device
        if any(p.device != device for p in params):
            raise ValueError("GradientNoise expects all parameters on one device")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        # One flat buffer per dtype; each parameter gets a view shaped like it. Filling the buffer
        # in one normal_ call keeps the draw order fixed whatever the parameter list looks like.
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        self._views: list[torch.Tensor] = []
        offsets: dict[torch.dtype, int] = {}
        for p in params:
            offsets[p.dtype] = offsets.get(p.dtype, 0) + p.numel()
        for dtype, total in offsets.items():
            self._buffers[dtype] = torch.empty(total, device=device, dtype=dtype)
        cursor = dict.fromkeys(offsets, 0)
        for p in params:
            start = cursor[p.dtype]
            self._views.append(self._buffers[p.dtype][start : start + p.numel()].view_as(p))
            cursor[p.dtype] = start + p.numel()

    @property
    def numel(self) -> int:
        return sum(b.numel() for b in self._buffers.values())

    def variance(self, t: int | None = None) -> float:
        """The variance of each noise entry at update ``t`` (default: the next update)."""
        return noise_variance(self.alpha, self.gamma, self.t if t is None else t)

    def _draw(self) -> None:
        for buf in self._buffers.values():
            buf.normal_(generator=self.generator)

    @torch.no_grad()
    def add_to(
        self, tensors: list[torch.Tensor | None], scale: float | Sequence[float] = 1.0
    ) -> None:
        """Add ``scale * sigma_t * n_t`` to ``tensors`` (one per parameter, same order; None is
        skipped but still consumes its share of the draw) and advance ``t`` by one. ``scale``
        is one number or one per tensor (one ``_foreach_add_`` per distinct value)."""
        if len(tensors) != len(self._views):
            raise ValueError(f"expected {len(self._views)} tensors, got {len(tensors)}")
        scales = [scale] * len(tensors) if isinstance(scale, int | float) else list(scale)
        if len(scales) != len(tensors):
            raise ValueError(f"expected {len(tensors)} scales, got {len(scales)}")
        if self.alpha > 0:
            std = math.sqrt(self.variance())
            self._draw()
            by_scale: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            for x, v, c in zip(tensors, self._views, scales, strict=True):
                if x is not None:
                    xs, vs = by_scale.setdefault(float(c), ([], []))
                    xs.append(x)
                    vs.append(v)
            for c, (xs, vs) in by_scale.items():
                torch._foreach_add_(xs, vs, alpha=c * std)
        self.t += 1

    def apply_(self, tensors: list[torch.Tensor | None], info: UpdateInfo) -> None:
        """The chain's entry: gradients (stage ``gradient``) or weights times ``-lr`` of each
        parameter's own group (``info.lr_of``)."""
        if self.stage != "update":
            self.add_to(tensors)
        elif info.param_lrs is None:
            self.add_to(tensors, scale=-info.lr)
        else:
            self.add_to(tensors, scale=[-info.lr_of(p) for p in self.params])

    def __call__(self) -> None:
        """Add noise to the parameters' ``.grad`` (call between ``backward()`` and ``step()``)."""
        self.add_to([p.grad for p in self.params])

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "generator": self.generator.get_state(),
            "alpha": self.alpha,
            "gamma": self.gamma,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        # a CPU ByteTensor even for a CUDA generator; torch.load(map_location=...) may move it
        self.generator.set_state(state["generator"].cpu())

    def __repr__(self) -> str:
        return (
            f"GradientNoise(alpha={self.alpha:g}, gamma={self.gamma:g}, seed={self.seed}, "
            f"t={self.t}, numel={self.numel})"
        )
