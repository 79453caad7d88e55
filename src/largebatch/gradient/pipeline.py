"""The order of everything that happens to a gradient between backward and the weights.

This is the one place where the order is written down; order is semantics. For one update:

1. backward over the micro-batches, each loss scaled so that the sum is the mean over the global
   batch (engine); under DDP the all-reduce runs on the last micro-batch only (``no_sync``), so
   the gradient here is the global average.
2. AMP: bf16 autocast needs no loss scaling, so there is nothing to unscale. (A float16 path
   would unscale here, before any transform reads the gradient.)
3. clip the global gradient norm to ``optim.grad_clip_norm`` (if set). Clipping comes before the
   noise so the injected variance is exactly the configured one.
4. gradient noise, ``noise.placement = gradient`` (the paper): ``g += N(0, sigma_t^2)``.
5. LARS trust ratio (``optim.name = lars``) on weight tensors: adds weight decay and rescales
   (see :mod:`largebatch.gradient.trust_ratio`).
6. ``optimizer.step()``: coupled weight decay ``g += wd w`` (SGD groups), momentum, LR.
   Coupled weight decay is additive, so step 4 before or after it gives the same update.
7. gradient noise, ``noise.placement = update``: ``w -= lr * sigma_t n_t`` after the step, so the
   noise enters the weights with the LR but momentum never accumulates it.
"""

from __future__ import annotations

from typing import Any

import torch

from largebatch.gradient.clip import clip_global_norm_
from largebatch.gradient.noise import GradientNoise
from largebatch.gradient.trust_ratio import apply_trust_ratio_


class GradientPipeline:
    def __init__(
        self,
        params: list[torch.nn.Parameter],
        noise: GradientNoise | None = None,
        noise_placement: str = "gradient",
        clip_norm: float | None = None,
        trust_params: list[torch.nn.Parameter] | None = None,
        trust_eta: float = 0.001,
        trust_weight_decay: float = 0.0,
    ) -> None:
        if noise_placement not in ("gradient", "update"):
            raise ValueError(f"noise placement '{noise_placement}' is not one of: gradient, update")
        self.params = params
        self.noise = noise
        self.noise_placement = noise_placement
        self.clip_norm = clip_norm
        self.trust_params = trust_params or []
        self.trust_eta = trust_eta
        self.trust_weight_decay = trust_weight_decay
        self.last_grad_norm: torch.Tensor | None = None

    def before_step(self) -> None:
        """Steps 3-5, on the averaged gradients."""
        if self.clip_norm is not None:
            self.last_grad_norm = clip_global_norm_([p.grad for p in self.params], self.clip_norm)
        if self.noise is not None and self.noise_placement == "gradient":
            self.noise()
        if self.trust_params:
            with_grad = [p for p in self.trust_params if p.grad is not None]
            apply_trust_ratio_(
                with_grad, [p.grad for p in with_grad], self.trust_eta, self.trust_weight_decay
            )

    def after_step(self, lr: float) -> None:
        """Step 7."""
        if self.noise is not None and self.noise_placement == "update":
            self.noise.add_to([p.data for p in self.noise.params], scale=-lr)

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.noise.state_dict() if self.noise is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.noise is not None and state.get("noise") is not None:
            self.noise.load_state_dict(state["noise"])
