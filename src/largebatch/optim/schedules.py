"""Learning-rate schedules as pure functions of the optimizer step.

A :class:`Schedule` maps the number of completed optimizer updates ``t`` to the learning rate of
update ``t`` (the first update uses ``t = 0``). Epoch-based milestones are converted with
``steps_per_epoch``, so a milestone at epoch ``e`` takes effect from update ``e * steps_per_epoch``.

``lr(t) = peak_lr * warmup(t) * decay(t)`` where

- ``warmup(t)``: gradual warmup (Goyal et al. 2017), linear per update from ``start_factor`` to 1
  over ``warmup_steps``, then 1.
- ``decay(t)``:
  - ``constant``: 1.
  - ``multistep``: ``factor ** (number of milestones reached)``.
  - ``paper``: the schedule of Jaiswal & Taura: multiply by ``factor`` at epochs 25 and 40 and at
    every 10th epoch after that (50, 60, ...). The text says the LR is decayed "by 10%"; the
    literal reading, ``factor = 0.9``, is the default.
  - ``cosine``: ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of the
    post-warmup steps done (Loshchilov & Hutter 2017, without restarts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from largebatch.config import OptimConfig


def paper_milestones(total_epochs: int) -> list[int]:
    """Epochs at which the paper's schedule decays: 25, 40, 50, 60, ... (below ``total_epochs``)."""
    out = [e for e in (25, 40) if e < total_epochs]
    e = 50
    while e < total_epochs:
        out.append(e)
        e += 10
    return out


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    total_steps: int
    steps_per_epoch: int
    kind: str = "constant"
    milestones_epochs: tuple[float, ...] = field(default_factory=tuple)
    factor: float = 0.1
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    min_lr_factor: float = 0.0

    def warmup(self, t: int) -> float:
        if t >= self.warmup_steps:
            return 1.0
        s = self.warmup_start_factor
        return s + (1.0 - s) * t / self.warmup_steps

    def decay(self, t: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind in ("multistep", "paper"):
            reached = sum(1 for e in self.milestones_epochs if t >= round(e * self.steps_per_epoch))
            return self.factor**reached
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            p = min(1.0, max(0.0, (t - self.warmup_steps) / span))
            m = self.min_lr_factor
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
        raise ValueError(f"unknown schedule '{self.kind}'")

    def __call__(self, t: int) -> float:
        return self.peak_lr * self.warmup(t) * self.decay(t)


def build_schedule(
    cfg: OptimConfig,
    peak_lr: float,
    steps_per_epoch: int,
    total_epochs: int,
    epoch_scale: float = 1.0,
) -> Schedule:
    """The schedule a run's optimizer config describes, at the already-scaled ``peak_lr``.

    ``total_epochs`` is the run's length as configured; ``epoch_scale`` stretches it and every
    milestone (Hoffer et al.'s regime adaptation, ``train.scale_epochs``). Warmup is not stretched.
    """
    if cfg.schedule == "paper":
        base: tuple[float, ...] = tuple(float(e) for e in paper_milestones(total_epochs))
        factor = 0.9 if cfg.decay_factor is None else cfg.decay_factor
    else:
        base = tuple(cfg.milestones)
        factor = 0.1 if cfg.decay_factor is None else cfg.decay_factor
    milestones = tuple(e * epoch_scale for e in base)
    total_epochs = round(total_epochs * epoch_scale)
    return Schedule(
        peak_lr=peak_lr,
        total_steps=steps_per_epoch * total_epochs,
        steps_per_epoch=steps_per_epoch,
        kind=cfg.schedule,
        milestones_epochs=milestones,
        factor=factor,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        warmup_start_factor=cfg.warmup_start_factor,
        min_lr_factor=cfg.min_lr_factor,
    )
