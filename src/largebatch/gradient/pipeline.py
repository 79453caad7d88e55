"""The order of everything that happens to a gradient between backward and the weights.

Order is semantics, so it is code: :data:`TRANSFORM_ORDER` is the list the chain is built in, and
a test checks that this docstring and the README list the same order. For one update:

1. Backward over the micro-batches (:mod:`largebatch.engine.update`), each micro-batch loss
   scaled so that the sum is the mean over the global batch; under DDP the all-reduce runs on the
   last micro-batch only (``no_sync``), so the gradient the chain sees is the global average.
2. AMP: bf16 autocast needs no loss scaling, so there is nothing to unscale. (A float16 path would
   unscale here, before any transform reads the gradient.)
3. ``clip``: clip the global gradient norm to ``optim.grad_clip_norm`` (if set). Clipping comes
   before the noise so that the injected variance is exactly the configured one.
4. ``noise``: gradient noise at ``noise.placement = gradient`` (the paper):
   ``g += N(0, sigma_t^2 I)``.
5. ``microbatch_noise``, ``diagonal_noise``, ``multiplicative_noise``: the shaped kinds
   (``noise.kind``; one at most, instead of ``noise``), covariance ``c * Sigma``. The first two
   also watch each micro-batch's backward; ``multiplicative_noise`` acts earlier, as per-example
   loss weights in step 1.
6. ``optimizer.step()``: torch SGD (coupled weight decay ``g += wd w``, momentum, LR), or under
   ``optim.name = lars`` :class:`largebatch.optim.LARS`, whose layer-wise trust ratio is part of
   the step (it needs the LR's place relative to momentum, so it is not a chain transform).
   Coupled weight decay is additive, so noise before or after it gives the same update.
7. Gradient noise at ``noise.placement = update``: ``w -= lr sigma_t n_t`` after the step, so the
   noise enters the weights with the LR but momentum never accumulates it.

The transforms of steps 3-5 and 7 are named (in order) in :data:`TRANSFORM_ORDER`: a numbered
item that starts with names in double backquotes followed by a colon names chain transforms.

Example::

    >>> import torch
    >>> from largebatch.config import Config
    >>> cfg = Config()
    >>> cfg.optim.grad_clip_norm, cfg.noise.alpha = 1.0, 1e-5
    >>> model = torch.nn.Linear(3, 2)
    >>> build_chain(list(model.parameters()), cfg).order
    ['clip', 'noise']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from largebatch.config import Config
from largebatch.errors import UserError
from largebatch.gradient.base import GradientTransform, TransformChain
from largebatch.gradient.calibration import NoiseCalibration
from largebatch.gradient.clip import ClipGlobalNorm
from largebatch.gradient.diagonal_noise import DiagonalNoise
from largebatch.gradient.microbatch_noise import MicrobatchNoise
from largebatch.gradient.multiplicative_noise import MultiplicativeNoise
from largebatch.gradient.noise import GradientNoise, is_bias_or_norm

# The names of the chain's transforms in the order they act (steps 3-5 and 7 above; ``noise``
# acts at step 4 or 7 by its placement).
TRANSFORM_ORDER = (
    "clip",
    "noise",
    "microbatch_noise",
    "diagonal_noise",
    "multiplicative_noise",
)


@dataclass(frozen=True)
class ChainContext:
    """What the shaped noise kinds need to know about the run besides its config."""

    global_batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    lr: float
    """The scaled peak learning rate (``lr_L``)."""
    world_size: int = 1
    rank: int = 0
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def single(cls, cfg: Config, lr: float) -> ChainContext:
        """One process, the micro-batch of the config (or the whole batch)."""
        b = cfg.train.global_batch_size
        m = cfg.train.micro_batch_size or b
        return cls(b, m, b // m, lr)


def calibrate(cfg: Config, ctx: ChainContext) -> NoiseCalibration:
    """The shaped kinds' target ``c`` for this run."""
    return NoiseCalibration(
        cfg.noise.match,
        cfg.optim.base_batch_size,
        ctx.global_batch_size,
        base_lr=cfg.optim.lr,
        lr=ctx.lr,
        scale=cfg.noise.scale,
    )


def _shaped_noise(
    params: list[torch.nn.Parameter], cfg: Config, ctx: ChainContext, c: float
) -> GradientTransform:
    n = cfg.noise
    if n.kind == "multiplicative":
        device = params[0].device if params else torch.device("cpu")
        return MultiplicativeNoise(
            c,
            ctx.global_batch_size,
            seed=n.seed,
            world_size=ctx.world_size,
            rank=ctx.rank,
            device=device,
        )
    if c > 0 and ctx.accumulation_steps < 2:
        raise UserError(
            f"noise.kind={n.kind} draws its noise from the deviations between micro-batches and "
            f"needs at least 2 per device; set train.micro_batch_size to a divisor of the "
            f"per-device batch {ctx.global_batch_size // ctx.world_size} below it (e.g. "
            f"{ctx.global_batch_size // ctx.world_size // 2})"
        )
    selected = params if n.include_bias_and_norm else [p for p in params if not is_bias_or_norm(p)]
    cls = MicrobatchNoise if n.kind == "microbatch" else DiagonalNoise
    return cls(
        selected,
        c,
        ctx.micro_batch_size,
        seed=n.seed,
        world_size=ctx.world_size,
        rank=ctx.rank,
        all_reduce=ctx.all_reduce,
    )


def build_chain(
    params: list[torch.nn.Parameter], cfg: Config, ctx: ChainContext | None = None
) -> TransformChain:
    """The run's gradient transforms from its config, in :data:`TRANSFORM_ORDER`.

    ``ctx`` describes the batch plan and the ranks (default: one process, ``optim.lr``
    unscaled); the shaped noise kinds need it.
    """
    ctx = ctx or ChainContext.single(cfg, cfg.optim.lr)
    o, n = cfg.optim, cfg.noise
    made: dict[str, GradientTransform] = {}
    if o.grad_clip_norm is not None:
        made["clip"] = ClipGlobalNorm(params, o.grad_clip_norm)
    if n.kind != "isotropic":
        shaped = _shaped_noise(params, cfg, ctx, calibrate(cfg, ctx).multiplier)
        made[shaped.name] = shaped
    elif n.alpha > 0:
        made["noise"] = GradientNoise(
            params,
            alpha=n.alpha,
            gamma=n.gamma,
            seed=n.seed,
            include_bias_and_norm=n.include_bias_and_norm,
            placement=n.placement,
        )
    return TransformChain([made[name] for name in TRANSFORM_ORDER if name in made])
