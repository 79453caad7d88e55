"""Global gradient-norm clipping as a transform on a list of gradients (in place)."""

from __future__ import annotations

import torch

from largebatch.gradient.base import GradientTransform, UpdateInfo


@torch.no_grad()
def clip_global_norm_(grads: list[torch.Tensor | None], max_norm: float) -> torch.Tensor:
    """Scale ``grads`` so that their joint L2 norm is at most ``max_norm``; return the norm
    before clipping (a device tensor: no host synchronisation)."""
    present = [g for g in grads if g is not None]
    if not present:
        return torch.zeros(())
    norms = torch._foreach_norm(present)
    total = torch.linalg.vector_norm(torch.stack(norms))
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(present, factor)
    return total


class ClipGlobalNorm(GradientTransform):
    """``g <- g * min(1, max_norm / (|g| + 1e-6))`` with ``|g|`` the joint L2 norm of all the
    transform's gradients. ``last_norm`` holds the norm before clipping (a device tensor).

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> clip = ClipGlobalNorm([w], max_norm=1.0)
        >>> clip.apply_([w.grad], UpdateInfo(step=0, lr=0.1))
        >>> [round(v, 4) for v in w.grad.tolist()], float(clip.last_norm)
        ([0.6, 0.8], 5.0)
    """

    name = "clip"

    def __init__(self, params: list[torch.nn.Parameter], max_norm: float) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.params = list(params)
        self.max_norm = float(max_norm)
        self.last_norm: torch.Tensor | None = None

    def apply_(self, grads: list[torch.Tensor | None], info: UpdateInfo) -> None:
        self.last_norm = clip_global_norm_(grads, self.max_norm)
