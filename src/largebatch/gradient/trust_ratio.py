"""LARS's layer-wise trust ratio (You, Gitman & Ginsburg 2017) as a gradient transform.

For each parameter tensor ``w`` with gradient ``g`` and weight decay ``wd``::

    g  <-  eta * |w| / (|g| + wd |w|) * (g + wd w)

then plain SGD with momentum (and no further weight decay) applies the global learning rate::

    v <- m v + lr * g ;  w <- w - v      (torch.optim.SGD: v <- m v + g ; w <- w - lr v)

so the LR enters outside the trust ratio, like You et al.'s Algorithm 1. Tensors with a zero norm
(or zero gradient) get ratio 1. Biases and norm parameters are excluded by the caller, as is usual.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def apply_trust_ratio_(
    params: list[torch.Tensor], grads: list[torch.Tensor], eta: float, weight_decay: float
) -> None:
    """In place: ``grads[i] <- eta |w_i| / (|g_i| + wd |w_i|) * (g_i + wd w_i)``."""
    if not params:
        return
    w_norms = torch.stack(torch._foreach_norm(params))
    g_norms = torch.stack(torch._foreach_norm(grads))
    if weight_decay:
        torch._foreach_add_(grads, params, alpha=weight_decay)
    denom = g_norms + weight_decay * w_norms
    ratio = torch.where((w_norms > 0) & (denom > 0), eta * w_norms / denom, torch.ones_like(denom))
    torch._foreach_mul_(grads, list(ratio.unbind()))
