"""Build the optimizer, its parameter groups and the gradient-transform chain from a config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from largebatch.config import Config
from largebatch.gradient.base import TransformChain
from largebatch.gradient.noise import is_bias_or_norm
from largebatch.gradient.pipeline import ChainContext, build_chain
from largebatch.optim.lars import LARS, lars_param_groups


@dataclass
class OptimizerSetup:
    optimizer: torch.optim.Optimizer
    chain: TransformChain


def build_optimizer(
    model: nn.Module, config: Config, lr: float, context: ChainContext | None = None
) -> OptimizerSetup:
    """SGD (momentum, optional Nesterov) or LARS, with weight-decay groups; plus the chain.

    ``context``: the batch plan and ranks the gradient-transform chain needs (default: one
    process at the config's batch).

    Parameter groups, ``weights`` then ``bias_and_norm``: weights (``ndim >= 2``) always get
    ``optim.weight_decay``; biases and norm parameters (``ndim <= 1``) get it only if
    ``optim.decay_bias_and_norm``.

    ``optim.name = lars``: :class:`largebatch.optim.LARS` in the form ``optim.lars_form``, with
    ``eta = optim.trust_coefficient``. The ``weights`` group gets the trust ratio (on
    ``g + wd w``, its own weight decay); ``bias_and_norm`` is excluded (ratio 1: momentum SGD on
    ``g + wd w`` with the form's LR placement), as LARS is usually run.
    """
    cfg = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    context = context or ChainContext.single(config, lr)
    chain = build_chain(params, config, context)
    if cfg.name == "lars":
        # the same split as SGD's groups below (ndim <= 1: biases and norm parameters)
        lars = LARS(
            lars_param_groups(model, cfg.weight_decay, cfg.decay_bias_and_norm),
            lr=lr,
            momentum=cfg.momentum,
            eta=cfg.trust_coefficient,
            form=cfg.lars_form,
            nesterov=cfg.nesterov,
        )
        return OptimizerSetup(lars, chain)
    weights = [p for p in params if not is_bias_or_norm(p)]
    others = [p for p in params if is_bias_or_norm(p)]
    other_wd = cfg.weight_decay if cfg.decay_bias_and_norm else 0.0
    sgd_groups = [
        g
        for g in (
            {"params": weights, "weight_decay": cfg.weight_decay, "name": "weights"},
            {"params": others, "weight_decay": other_wd, "name": "bias_and_norm"},
        )
        if g["params"]
    ]
    optimizer = torch.optim.SGD(
        sgd_groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True
    )
    return OptimizerSetup(optimizer, chain)
