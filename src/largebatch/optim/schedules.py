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

In a user's own loop the same schedules are ``torch.optim.lr_scheduler.LambdaLR`` multipliers:
the factories below (``warmup_lambda``, ``warmup_cosine_lambda``, ``multistep_lambda``,
``paper_lambda``) return a :class:`Schedule` with ``peak_lr = 1``, i.e. the factor ``lr(t) /
peak_lr``, and :func:`as_lambda_lr` wraps any schedule for an optimizer whose ``lr`` is the peak.
Call ``scheduler.step()`` once after every ``optimizer.step()``: ``LambdaLR`` then sets the LR of
update ``t`` to ``peak_lr * factor(t)``, the convention here (first update: ``t = 0``).

Example::

    >>> import torch
    >>> from largebatch.optim.schedules import warmup_cosine_lambda
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.4)
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lambda(2, 6))
    >>> lrs = []
    >>> for _ in range(6):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
    ...     opt.step(); sched.step()
    >>> lrs
    [0.0, 0.2, 0.4, 0.3414, 0.2, 0.0586]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

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
    """``lr(t) = peak_lr * warmup(t) * decay(t)`` for update ``t`` (see the module docstring).

    >>> Schedule(peak_lr=0.1, total_steps=10, steps_per_epoch=1, warmup_steps=2)(1)
    0.05
    """

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

    def multiplier(self, t: int) -> float:
        """``lr(t) / peak_lr``: what ``LambdaLR`` multiplies the optimizer's (peak) LR by."""
        return self.warmup(t) * self.decay(t)

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


def warmup_lambda(warmup_steps: int, start_factor: float = 0.0) -> Schedule:
    """Gradual warmup (Goyal et al. 2017), then constant, as a ``LambdaLR`` multiplier::

        f(t) = s + (1 - s) t / W   for t < W,      f(t) = 1   for t >= W

    with ``W = warmup_steps`` optimizer updates and ``s = start_factor``.

    >>> f = warmup_lambda(4, start_factor=0.2)
    >>> [round(f(t), 2) for t in range(6)]
    [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    """
    _check_warmup(warmup_steps, start_factor)
    return Schedule(
        peak_lr=1.0,
        total_steps=warmup_steps,
        steps_per_epoch=1,
        warmup_steps=warmup_steps,
        warmup_start_factor=start_factor,
    )


def warmup_cosine_lambda(
    warmup_steps: int, total_steps: int, start_factor: float = 0.0, min_factor: float = 0.0
) -> Schedule:
    """Warmup, then cosine decay to ``min_factor`` at ``total_steps`` (Loshchilov & Hutter
    2017, no restarts), as a ``LambdaLR`` multiplier::

        f(t) = warmup(t)                                          t < W
        f(t) = m + (1 - m) (1 + cos(pi (t - W) / (T - W))) / 2    W <= t <= T, then m

    >>> f = warmup_cosine_lambda(warmup_steps=2, total_steps=6, min_factor=0.1)
    >>> [round(f(t), 3) for t in (0, 1, 2, 4, 6, 9)]
    [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]
    """
    _check_warmup(warmup_steps, start_factor)
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    return Schedule(
        peak_lr=1.0,
        total_steps=total_steps,
        steps_per_epoch=1,
        kind="cosine",
        warmup_steps=warmup_steps,
        warmup_start_factor=start_factor,
        min_lr_factor=min_factor,
    )


def multistep_lambda(
    milestones: list[int],
    factor: float = 0.1,
    warmup_steps: int = 0,
    start_factor: float = 0.0,
    steps_per_epoch: int = 1,
) -> Schedule:
    """Step decay after warmup, as a ``LambdaLR`` multiplier::

        f(t) = warmup(t) * factor ** #{milestones e : t >= e * steps_per_epoch}

    ``milestones`` are in epochs of ``steps_per_epoch`` updates (default 1: in updates).

    >>> f = multistep_lambda([3, 5], factor=0.5)
    >>> [f(t) for t in range(7)]
    [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    _check_warmup(warmup_steps, start_factor)
    return Schedule(
        peak_lr=1.0,
        total_steps=0,
        steps_per_epoch=steps_per_epoch,
        kind="multistep",
        milestones_epochs=tuple(float(m) for m in milestones),
        factor=factor,
        warmup_steps=warmup_steps,
        warmup_start_factor=start_factor,
    )


def paper_lambda(
    steps_per_epoch: int, total_epochs: int, factor: float = 0.9, warmup_steps: int = 0
) -> Schedule:
    """The schedule of Jaiswal & Taura, as a ``LambdaLR`` multiplier: times ``factor`` at epochs
    25 and 40 and every 10th epoch after (the paper's "by 10%"; literal reading ``0.9``)::

        f(t) = warmup(t) * factor ** #{e in (25, 40, 50, 60, ...) : t >= e * steps_per_epoch}

    >>> f = paper_lambda(steps_per_epoch=10, total_epochs=60)
    >>> [round(f(t), 4) for t in (249, 250, 400, 500, 599)]
    [1.0, 0.9, 0.81, 0.729, 0.729]
    """
    _check_warmup(warmup_steps, 0.0)
    return Schedule(
        peak_lr=1.0,
        total_steps=steps_per_epoch * total_epochs,
        steps_per_epoch=steps_per_epoch,
        kind="paper",
        milestones_epochs=tuple(float(e) for e in paper_milestones(total_epochs)),
        factor=factor,
        warmup_steps=warmup_steps,
    )


def as_lambda_lr(
    optimizer: torch.optim.Optimizer, schedule: Schedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that follows ``schedule`` on an optimizer whose ``lr`` is the peak LR:
    ``lr(t) = group_lr * schedule.multiplier(t)``. Step it once after every ``optimizer.step()``.

    >>> s = Schedule(peak_lr=0.4, total_steps=10, steps_per_epoch=1, warmup_steps=4)
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.4)
    >>> sched = as_lambda_lr(opt, s)
    >>> [opt.param_groups[0]["lr"], s(0)]
    [0.0, 0.0]
    >>> opt.step(); sched.step(); round(opt.param_groups[0]["lr"], 6) == round(s(1), 6)
    True
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.multiplier)


def _check_warmup(warmup_steps: int, start_factor: float) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= start_factor <= 1.0:
        raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
