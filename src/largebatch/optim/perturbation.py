"""Moving the weights to a nearby point for one gradient, and back exactly.

The sharpness-aware family takes its gradient at perturbed weights ``theta + e`` and applies it at
``theta``. The pieces they share (the optimizers of :mod:`largebatch.optim.sam` and the engine's
update, :mod:`largebatch.engine.update`) live here:

- :func:`ascent_scale` turns a direction ``d`` into the perturbation ``e = s * d``:
  ``s = rho / |d|`` (normalised: SAM's ``e = rho d / |d|``, ``|d|`` the L2 norm over all
  parameters, ``rho`` in weight units) or ``s = rho / loss_scale`` (unnormalised: ``e = r d``,
  ``r = rho`` in weight units per gradient unit; ``loss_scale`` divides out a factor the loss was
  multiplied by before backward);
- :class:`Perturbation` adds ``e`` in place and restores ``theta`` by a copy, so the weights after
  the round trip are bit-identical (a subtraction would round);
- :func:`frozen_batchnorm` keeps BatchNorm running statistics as they were during a perturbed
  forward: they are updated once per update, from the unperturbed pass.

None of them reads a value back to the host: ``|d|`` stays a device tensor.

Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> d = [torch.tensor([3.0, 4.0])]                     # |d| = 5
    >>> move = Perturbation()
    >>> move.apply_([w], d, ascent_scale(d, rho=0.5, normalize=True))
    >>> w.tolist()                                          # w + 0.5 * d / 5
    [1.2999999523162842, 2.4000000953674316]
    >>> move.restore_()
    >>> w.tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

EPS = 1e-12
"""Added to ``|d|`` so a zero direction gives a zero perturbation, not NaN."""


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all entries of all ``tensors`` (a device tensor; float32 at least)."""
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm([t.float() if t.dtype != torch.float64 else t for t in tensors])
    return torch.linalg.vector_norm(torch.stack(norms))


def ascent_scale(
    directions: Sequence[torch.Tensor], rho: float, normalize: bool, loss_scale: float = 1.0
) -> torch.Tensor | float:
    """``rho / (|d| + EPS)`` (normalised) or ``rho / loss_scale`` (unnormalised)."""
    if normalize:
        return rho / (global_norm(directions) + EPS)
    return rho / loss_scale


class Perturbation:
    """``theta <- theta + s * d`` in place, then an exact restore of ``theta`` (a copy).

    The backup buffers are allocated once and reused while the parameter list keeps its shapes.
    """

    def __init__(self) -> None:
        self._params: list[torch.Tensor] | None = None
        self._backup: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        """The weights are perturbed (``apply_`` ran, ``restore_`` not yet)."""
        return self._params is not None

    @torch.no_grad()
    def apply_(
        self,
        params: Sequence[torch.Tensor],
        directions: Sequence[torch.Tensor],
        scale: torch.Tensor | float,
    ) -> None:
        """Save ``params``, then add ``scale * directions`` to them (same order and shapes)."""
        if self._params is not None:
            raise RuntimeError("the weights are already perturbed; restore_() them first")
        params = list(params)
        if len(params) != len(directions):
            raise ValueError(f"{len(params)} parameters but {len(directions)} directions")
        if [b.shape for b in self._backup] != [p.shape for p in params] or any(
            b.device != p.device or b.dtype != p.dtype
            for b, p in zip(self._backup, params, strict=True)
        ):
            self._backup = [torch.empty_like(p) for p in params]
        if params:
            torch._foreach_copy_(self._backup, params)
            steps = [d.to(p.dtype) for d, p in zip(directions, params, strict=True)]
            if isinstance(scale, torch.Tensor):
                steps = torch._foreach_mul(steps, scale.to(params[0].dtype))
                torch._foreach_add_(params, steps)
            else:
                torch._foreach_add_(params, steps, alpha=scale)
        self._params = params

    @torch.no_grad()
    def restore_(self) -> None:
        """Put back the saved weights (bit-exact); nothing when not perturbed."""
        if self._params is None:
            return
        if self._params:
            torch._foreach_copy_(self._params, self._backup)
        self._params = None


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm (plain, Ghost, Sync) of ``model`` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def frozen_batchnorm(modules: nn.Module | Sequence[_BatchNorm]) -> Iterator[None]:
    """Inside, forwards in training mode still normalise by their batch, but the running
    statistics (mean, variance, count) are put back as they were on exit.

    ``modules``: a model (its :func:`batchnorm_modules`) or a list of BatchNorm modules.
    """
    if isinstance(modules, nn.Module):
        modules = batchnorm_modules(modules)
    saved = [
        [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        for m in modules
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, copies in zip(modules, saved, strict=True):
                buffers = [
                    b
                    for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                    if b is not None
                ]
                for b, c in zip(buffers, copies, strict=True):
                    b.copy_(c)
