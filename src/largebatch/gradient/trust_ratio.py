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

from largebatch.gradient.base import GradientTransform, UpdateInfo


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


class TrustRatio(GradientTransform):
    """The trust ratio above as a chain transform, on the weight tensors given.

    Example::

        >>> w = torch.nn.Parameter(torch.full((4,), 2.0)); w.grad = torch.ones(4)
        >>> TrustRatio([w], eta=0.001, weight_decay=0.0).apply_([w.grad], UpdateInfo(0, 0.1))
        >>> round(w.grad[0].item(), 6)  # eta * |w| / |g| = 0.001 * 4 / 2
        0.002
    """

    name = "trust_ratio"

    def __init__(self, params: list[torch.nn.Parameter], eta: float, weight_decay: float) -> None:
        self.params = list(params)
        self.eta = float(eta)
        self.weight_decay = float(weight_decay)

    def apply_(self, grads: list[torch.Tensor | None], info: UpdateInfo) -> None:
        pairs = [(p, g) for p, g in zip(self.params, grads, strict=True) if g is not None]
        if pairs:
            ps, gs = zip(*pairs, strict=True)
            apply_trust_ratio_(list(ps), list(gs), self.eta, self.weight_decay)
