"""Optimizers, LR scaling rules and schedules."""

from largebatch.optim.build import OptimizerSetup, build_optimizer
from largebatch.optim.lars import FORMS as LARS_FORMS
from largebatch.optim.lars import LARS, LarsForm, lars_param_groups
from largebatch.optim.penalty import gradient_norm_penalty
from largebatch.optim.sam import SAM, MomentumSAM
from largebatch.optim.scaling import scale_lr
from largebatch.optim.schedules import Schedule, build_schedule, paper_milestones

__all__ = [
    "LARS",
    "LARS_FORMS",
    "LarsForm",
    "MomentumSAM",
    "SAM",
    "OptimizerSetup",
    "Schedule",
    "build_optimizer",
    "build_schedule",
    "gradient_norm_penalty",
    "lars_param_groups",
    "paper_milestones",
    "scale_lr",
]
