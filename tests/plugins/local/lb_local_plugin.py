"""A plugin that is not installed: a module named by the config key ``train.plugins``.

It registers the multi-class hinge loss (Crammer & Singer 2001) as ``local_hinge``:
``l_i = max(0, 1 + max_{c != y_i} z_ic - z_iy_i)`` per example (logit units, not nats), so
``evaluate=False``: evaluation and analysis report cross-entropy for it.

    largebatch train CONFIG train.plugins=[lb_local_plugin] train.loss=local_hinge
"""

from __future__ import annotations

import torch

from largebatch.plugins import LossInfo, register_loss


def local_hinge(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, targets[:, None])
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return (1 + others.max(dim=1).values - true.squeeze(1)).clamp(min=0)


register_loss(LossInfo("local_hinge", "multi-class hinge loss", local_hinge, evaluate=False))
