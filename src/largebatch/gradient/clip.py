"""Global gradient-norm clipping as a transform on a list of gradients (in place)."""

from __future__ import annotations

import torch


@torch.no_grad()
def clip_global_norm_(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale ``grads`` so that their joint L2 norm is at most ``max_norm``; return the norm
    before clipping (a device tensor: no host synchronisation)."""
    grads = [g for g in grads if g is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, factor)
    return total
