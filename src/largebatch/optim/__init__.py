"""Optimizers, LR scaling rules and schedules."""

from largebatch.optim.build import OptimizerSetup, build_optimizer
from largebatch.optim.scaling import scale_lr
from largebatch.optim.schedules import Schedule, build_schedule, paper_milestones

__all__ = [
    "OptimizerSetup",
    "Schedule",
    "build_optimizer",
    "build_schedule",
    "paper_milestones",
    "scale_lr",
]
