"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017), in its published forms.

For a parameter tensor ``w`` with gradient ``g``, weight decay ``wd``, trust coefficient ``eta``,
momentum ``m`` and learning rate ``lr`` (the group's, this step), let ``d = g + wd w``. Each form
is a trust ratio ``r`` and a place for the LR relative to momentum (``v`` starts at 0):

``form="you2017"`` (default; You et al. 2017, Algorithm 1 -- LR *inside* momentum)::

    r = eta |w| / (|g| + wd |w| + eps)
    v <- m v + lr r d ;   w <- w - v

``form="optax"`` (``optax.lars``: the ratio of the update after weight decay, LR inside momentum)::

    r = eta |w| / (|d| + eps)
    v <- m v + lr r d ;   w <- w - v            (nesterov: w <- w - (lr r d + m v))

``form="timm"`` (``timm.optim.Lars``; apex ``LARC(clip=False)``, torch SGD's momentum -- LR
*outside* momentum, ``eps`` default 1e-8)::

    r = eta |w| / (|g| + wd |w| + eps)
    b <- m b + r d ;      w <- w - lr b         (nesterov: w <- w - lr (r d + m b))

``form="larc"`` (NVIDIA apex ``LARC(clip=True)``: the per-layer LR ``lr r`` is clipped at ``lr``,
LR outside momentum, ``eps`` default 1e-8)::

    r = min(eta |w| / (|g| + wd |w| + eps) / lr, 1)
    b <- m b + r d ;      w <- w - lr b

Under a constant LR the inside and outside placements give the same weights (``v = lr b``); under
warmup or decay they differ, which is why the form is named, never inferred.

Zero norms, exactly as each reference does:

- ``you2017``: ``r = 1`` when ``|w| = 0`` or the denominator ``|g| + wd |w| + eps`` is 0. A zero
  gradient with ``wd > 0`` therefore gets ``r = eta / wd`` (the formula's own value; the update is
  then ``lr eta w``), not 1; with ``wd = 0`` (and ``eps = 0``) it gets ``r = 1`` on ``d = 0``, so
  only momentum moves ``w``. The engine (``optim.name = lars``) uses this class, so the same holds
  there.
- ``optax``: ``r = 1`` when ``|w| = 0`` or ``|d| = 0``.
- ``timm``: ``r = 1`` when ``|w| = 0`` or ``|g| = 0`` (the weight decay is still added).
- ``larc``: when ``|w| = 0`` or ``|g| = 0``, apex leaves the gradient untouched: ``r = 1`` and no
  weight decay (``d = g``).

Excluded parameters (a group with ``trust_ratio=False``) get ``r = 1``: plain momentum SGD on ``d``
with the form's LR placement. Given a flat list of parameters, ``LARS`` makes two groups: the
parameters ``exclude`` selects (default: ``ndim <= 1``, biases and norm scales/shifts) get
``trust_ratio=False`` and ``weight_decay=0``; the others get both. Given parameter groups (dicts),
it keeps them as they are: each group sets its own ``weight_decay`` and ``trust_ratio`` (default
True), as the engine does with its ``weights`` and ``bias_and_norm`` groups.

Example::

    >>> import torch
    >>> from largebatch.optim import LARS
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = LARS(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, eta=0.001)
    >>> [g["trust_ratio"] for g in opt.param_groups]     # weights, then the excluded bias
    [True, False]
    >>> model(torch.randn(8, 4)).pow(2).mean().backward()
    >>> opt.step()
    >>> 0 < float(opt.state[model.weight]["trust_ratio"]) < 1
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LarsForm:
    """One published LARS variant.

    Attributes:
        name: the ``form=`` value.
        ratio_of: ``"sum"`` (``|g| + wd |w|``) or ``"update"`` (``|g + wd w|``) in the denominator.
        lr_inside: True: ``v <- m v + lr r d; w -= v``. False: ``b <- m b + r d; w -= lr b``.
        clip: LARC's ``r <- min(r / lr, 1)``.
        zero_rule: which norm being 0 gives ``r = 1``: ``"denominator"``, ``"update"`` or
            ``"gradient"`` (besides ``|w| = 0`` in every form).
        eps: the default ``eps``.
        reference: where the equations come from.
    """

    name: str
    ratio_of: str
    lr_inside: bool
    clip: bool
    zero_rule: str
    eps: float
    reference: str


FORMS: dict[str, LarsForm] = {
    f.name: f
    for f in (
        LarsForm("you2017", "sum", True, False, "denominator", 0.0, "You et al. 2017, Alg. 1"),
        LarsForm("optax", "update", True, False, "update", 0.0, "optax.lars"),
        LarsForm("timm", "sum", False, False, "gradient", 1e-8, "timm.optim.Lars"),
        LarsForm("larc", "sum", False, True, "gradient", 1e-8, "apex.parallel.LARC(clip=True)"),
    )
}


def is_bias_or_norm(p: torch.Tensor) -> bool:
    """The default exclusion: tensors with at most one dimension (biases, norm scales/shifts)."""
    return p.ndim <= 1


class LARS(torch.optim.Optimizer):
    """LARS with its form named (see the module docstring for the equations of each form).

    Args:
        params: parameters, or parameter groups (dicts; each may set ``lr``, ``momentum``,
            ``weight_decay``, ``eta``, ``eps``, ``nesterov`` and ``trust_ratio``).
        lr: learning rate (the scaled one, for the global batch).
        momentum: ``m``.
        weight_decay: ``wd`` (L2, added to the gradient before the trust ratio).
        eta: trust coefficient.
        form: ``you2017`` | ``optax`` | ``timm`` | ``larc``.
        exclude: for a flat parameter list, which parameters get neither trust ratio nor weight
            decay (default: ``ndim <= 1``); None excludes nothing. Ignored for parameter groups.
        eps: added to the ratio's denominator; None takes the form's default (0 or 1e-8).
        nesterov: Nesterov momentum (``optax``, ``timm``, ``you2017``; not ``larc``).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        form: str = "you2017",
        exclude: Callable[[torch.Tensor], bool] | None = is_bias_or_norm,
        eps: float | None = None,
        nesterov: bool = False,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown LARS form '{form}'; valid: {', '.join(FORMS)}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if nesterov and (momentum == 0 or form == "larc"):
            raise ValueError("nesterov needs momentum > 0 and a form other than larc")
        self.form = FORMS[form]
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            eps=self.form.eps if eps is None else float(eps),
            nesterov=nesterov,
            trust_ratio=True,
        )
        items: list[Any] = list(params)
        if items and not isinstance(items[0], dict) and exclude is not None:
            kept = [p for p in items if not exclude(p)]
            left = [p for p in items if exclude(p)]
            items = [{"params": kept}] if kept else []
            if left:
                items.append({"params": left, "weight_decay": 0.0, "trust_ratio": False})
        super().__init__(items, defaults)

    @torch.no_grad()
    def _ratios(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        updates: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``r`` per tensor, and where a zero norm set it to 1 (the form's zero-norm rule)."""
        f, wd, eta, eps = self.form, group["weight_decay"], group["eta"], group["eps"]
        w = torch.stack(torch._foreach_norm(params))
        g = torch.stack(torch._foreach_norm(grads))
        if f.ratio_of == "update":
            d = torch.stack(torch._foreach_norm(updates))
            denom = d + eps
            zero = d == 0
        else:
            denom = g + wd * w + eps
            zero = denom == 0 if f.zero_rule == "denominator" else g == 0
        ratio = eta * w / torch.where(zero, torch.ones_like(denom), denom)
        if f.clip:
            ratio = torch.clamp(ratio / group["lr"], max=1.0)
        unit = zero | (w == 0)
        return torch.where(unit, torch.ones_like(ratio), ratio), unit

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads: list[torch.Tensor] = [p.grad for p in params]
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            # d = g + wd w, in new tensors (p.grad is left as it was, like torch.optim.SGD)
            updates: list[torch.Tensor] = (
                list(torch._foreach_add(grads, params, alpha=wd))
                if wd
                else [g.clone() for g in grads]
            )
            if group["trust_ratio"]:
                ratio, unit = self._ratios(group, params, grads, updates)
                if self.form.name == "larc" and wd:
                    # apex adds no weight decay where a zero norm leaves the ratio at 1
                    updates = [
                        torch.where(z, g, u)
                        for z, g, u in zip(unit.unbind(), grads, updates, strict=True)
                    ]
                rs = list(ratio.unbind())
                torch._foreach_mul_(updates, rs)
                for p, r in zip(params, rs, strict=True):
                    self.state[p]["trust_ratio"] = r.detach().clone()
            scale = lr if self.form.lr_inside else 1.0  # the factor on d inside the buffer
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            if m:
                torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, updates, alpha=scale)
            if group["nesterov"]:
                # step = scale d + m buf
                torch._foreach_mul_(updates, scale)
                torch._foreach_add_(updates, bufs, alpha=m)
                step = updates
            else:
                step = bufs
            torch._foreach_add_(params, step, alpha=-(1.0 if self.form.lr_inside else lr))
        return loss

    def __repr__(self) -> str:
        return f"LARS(form={self.form.name}, groups={len(self.param_groups)})"


def lars_param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_bias_and_norm: bool = False,
    exclude: Callable[[torch.Tensor], bool] = is_bias_or_norm,
) -> list[dict[str, Any]]:
    """The engine's two groups: ``weights`` (trust ratio, ``weight_decay``) and ``bias_and_norm``
    (no trust ratio; ``weight_decay`` only if ``decay_bias_and_norm``). Empty groups are left out.

    >>> groups = lars_param_groups(torch.nn.Linear(3, 2), weight_decay=1e-4)
    >>> [(g["name"], g["weight_decay"], g["trust_ratio"]) for g in groups]
    [('weights', 0.0001, True), ('bias_and_norm', 0.0, False)]
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in params if not exclude(p)],
            "weight_decay": weight_decay,
            "trust_ratio": True,
            "name": "weights",
        },
        {
            "params": [p for p in params if exclude(p)],
            "weight_decay": weight_decay if decay_bias_and_norm else 0.0,
            "trust_ratio": False,
            "name": "bias_and_norm",
        },
    ]
    return [g for g in groups if g["params"]]
