"""Build the optimizer, its parameter groups and the gradient-transform chain from a config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from largebatch.config import Config
from largebatch.gradient.base import TransformChain
from largebatch.gradient.noise import is_bias_or_norm
from largebatch.gradient.pipeline import ChainContext, build_chain


@dataclass
class OptimizerSetup:
    optimizer: torch.optim.Optimizer
    chain: TransformChain


def build_optimizer(
    model: nn.Module, config: Config, lr: float, context: ChainContext | None = None
) -> OptimizerSetup:
    """SGD (momentum, optional Nesterov) with weight decay groups, or LARS; plus the chain.

    ``context``: the batch plan and ranks the gradient-transform chain needs (default: one
    process at the config's batch).

    Parameter groups: weights (``ndim >= 2``) always get ``weight_decay``; biases and norm
    parameters (``ndim <= 1``) get it only if ``decay_bias_and_norm``. Under LARS, weight tensors
    go through the trust ratio (which applies their weight decay) and SGD adds none for them.
    """
    cfg = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [p for p in params if not is_bias_or_norm(p)]
    others = [p for p in params if is_bias_or_norm(p)]
    other_wd = cfg.weight_decay if cfg.decay_bias_and_norm else 0.0
    # Under LARS the trust ratio transform applies the weights' decay itself.
    weight_wd = 0.0 if cfg.name == "lars" else cfg.weight_decay
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
    context = context or ChainContext.single(config, lr)
    return OptimizerSetup(optimizer, build_chain(params, config, context))
