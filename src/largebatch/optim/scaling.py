"""Learning-rate scaling rules: carry a base LR from the batch it belongs to to another batch.

- ``linear`` (Goyal et al. 2017; the paper's step 1): ``lr = base_lr * B / B_base``.
- ``sqrt`` (Hoffer et al. 2017, Krizhevsky 2014): ``lr = base_lr * sqrt(B / B_base)``, which keeps
  the covariance of the SGD update constant.
- ``none``: ``lr = base_lr`` whatever the batch.

The rule is always named, never inferred.
"""

from __future__ import annotations

import math

RULES = ("none", "linear", "sqrt")


def scale_lr(base_lr: float, base_batch_size: int, batch_size: int, rule: str) -> float:
    """The learning rate for ``batch_size`` examples per update.

    Args:
        base_lr: learning rate that belongs to ``base_batch_size``.
        base_batch_size: examples per update that ``base_lr`` was tuned for.
        batch_size: the global batch (examples per optimizer update, all ranks and micro-batches).
        rule: ``none`` | ``linear`` | ``sqrt``.

    >>> scale_lr(0.01, 32, 128, "linear")
    0.04
    >>> scale_lr(0.1, 256, 1024, "sqrt")
    0.2
    """
    if base_batch_size <= 0 or batch_size <= 0:
        raise ValueError("batch sizes must be positive")
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown scaling rule '{rule}'; valid: {', '.join(RULES)}")
