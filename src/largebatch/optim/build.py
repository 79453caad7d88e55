"""Build the optimizer, its parameter groups and the gradient pipeline from an ``optim`` config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from largebatch.config import NoiseConfig, OptimConfig
from largebatch.gradient.noise import GradientNoise, is_bias_or_norm
from largebatch.gradient.pipeline import GradientPipeline


@dataclass
class OptimizerSetup:
    optimizer: torch.optim.Optimizer
    pipeline: GradientPipeline


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, noise_cfg: NoiseConfig, lr: float
) -> OptimizerSetup:
    """SGD (momentum, optional Nesterov) with weight decay groups, or LARS; plus the pipeline.

    Parameter groups: weights (``ndim >= 2``) always get ``weight_decay``; biases and norm
    parameters (``ndim <= 1``) get it only if ``decay_bias_and_norm``. Under LARS, weight tensors
    go through the trust ratio (which applies their weight decay) and SGD adds none for them.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in params if not is_bias_or_norm(p)]
    others = [p for p in params if is_bias_or_norm(p)]
    other_wd = cfg.weight_decay if cfg.decay_bias_and_norm else 0.0
    trust_params: list[nn.Parameter] = []
    if cfg.name == "lars":
        trust_params = weights
        weight_wd = 0.0
    else:
        weight_wd = cfg.weight_decay
    groups = [
        g
        for g in (
            {"params": weights, "weight_decay": weight_wd, "name": "weights"},
            {"params": others, "weight_decay": other_wd, "name": "bias_and_norm"},
        )
        if g["params"]
    ]
    optimizer = torch.optim.SGD(
        groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True
    )
    noise = None
    if noise_cfg.alpha > 0:
        noise = GradientNoise(
            params,
            alpha=noise_cfg.alpha,
            gamma=noise_cfg.gamma,
            seed=noise_cfg.seed,
            include_bias_and_norm=noise_cfg.include_bias_and_norm,
        )
    pipeline = GradientPipeline(
        params,
        noise=noise,
        noise_placement=noise_cfg.placement,
        clip_norm=cfg.grad_clip_norm,
        trust_params=trust_params,
        trust_eta=cfg.trust_coefficient,
        trust_weight_decay=cfg.weight_decay,
    )
    return OptimizerSetup(optimizer, pipeline)
