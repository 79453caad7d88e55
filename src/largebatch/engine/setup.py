"""Building a run from a config: device, data, model, optimizer, transform chain, schedule.

:func:`build_run` does everything that happens once, before the first update, and returns a
:class:`Run` holding it; :mod:`largebatch.engine.loop` then trains it. Every user mistake it can
find (batch plan, data, a model that does not fit the data, SyncBatchNorm on CPU) is raised as a
:class:`~largebatch.errors.UserError` here, before any training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from largebatch.config import Config, sam_rho
from largebatch.data import DatasetBundle, build_dataset
from largebatch.data.sampling import BatchPlan, plan_batches, steps_per_epoch
from largebatch.distributed import DistContext
from largebatch.engine.records import data_notes
from largebatch.engine.swa import WeightAverage
from largebatch.engine.update import Sharpness, UpdateParts
from largebatch.errors import UserError
from largebatch.gradient.base import TransformChain
from largebatch.gradient.pipeline import ChainContext, calibrate
from largebatch.losses import LossFn, cross_entropy, evaluation_loss, training_loss
from largebatch.models.assembly import assemble_model
from largebatch.optim import build_optimizer, build_schedule, scale_lr
from largebatch.optim.perturbation import batchnorm_modules
from largebatch.optim.schedules import Schedule


@dataclass
class Run:
    """Everything a training loop needs, built once from the config."""

    cfg: Config
    dist: DistContext
    device: torch.device
    plan: BatchPlan
    data: DatasetBundle
    model: nn.Module
    """The bare model (evaluated and checkpointed)."""
    optimizer: torch.optim.Optimizer
    chain: TransformChain
    schedule: Schedule
    parts: UpdateParts
    """What each update calls: the model's DDP / compiled wrapper, the optimizer, the chain."""
    lr: float
    """The scaled peak learning rate."""
    steps_per_epoch: int
    total_epochs: int
    notes: list[str]
    """One-line facts about the run to show and record (e.g. the noise target)."""
    swa: WeightAverage | None = None
    """The weight average (``train.swa_start_epoch``), or None."""
    eval_loss: LossFn = cross_entropy
    """The per-example loss evaluation reports (:func:`largebatch.losses.evaluation_loss`)."""

    def data_record(self) -> dict[str, Any]:
        """What ``data.json`` holds: the dataset's report and the batch plan."""
        return {
            **self.data.info,
            "batch_plan": dataclasses.asdict(self.plan),
            "scaled_lr": self.lr,
            "total_epochs": self.total_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "transform_order": self.chain.order,
            "notes": self.notes,
        }


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={spec}: CUDA is not available here; use cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"train.device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use cuda:0 .. cuda:N-1 or auto"
        )
    return device


def check_distributed(cfg: Config, dist: DistContext, device: torch.device) -> None:
    if (
        dist.enabled
        and cfg.optim.grad_penalty
        and cfg.optim.grad_penalty_form != ("finite_difference")
    ):
        raise UserError(
            "optim.grad_penalty needs a double backward, which DistributedDataParallel does not "
            "reduce; set optim.grad_penalty_form=finite_difference (2 passes, runs under DDP) or "
            "run it in one process"
        )
    if dist.enabled and cfg.model.sync_batchnorm and device.type != "cuda":
        # PyTorch's SyncBatchNorm only runs on GPUs; without this check DDP raises a ValueError.
        raise UserError(
            "model.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm does not run "
            f"on {device.type}); set model.sync_batchnorm=false for per-replica BatchNorm "
            "statistics (= Ghost BatchNorm over the per-device batch)"
        )


def load_data(cfg: Config, plan: BatchPlan, device: torch.device) -> DatasetBundle:
    data = build_dataset(cfg.data, device)
    if len(data.train) < plan.global_batch_size and cfg.train.drop_last:
        raise UserError(
            f"train.global_batch_size={plan.global_batch_size} is larger than the training set "
            f"({len(data.train)} examples): every batch would be dropped; use a smaller batch "
            "or train.drop_last=false"
        )
    return data


def sharpness(cfg: Config, plan: BatchPlan) -> Sharpness | None:
    """The sharpness-aware gradient of ``optim.sam``, or of the penalty's finite-difference form
    (m-SAM with ``e_j = (lambda / 2) grad L_j``); None for neither."""
    o = cfg.optim
    if o.grad_penalty > 0 and o.grad_penalty_form == "finite_difference":
        return Sharpness("msam", o.grad_penalty / 2, normalize=False)
    if o.sam == "none":
        return None
    if o.sam == "msam" and plan.accumulation_steps < 2:
        raise UserError(
            f"optim.sam=msam perturbs each micro-batch by its own gradient, but each device's "
            f"{plan.per_device_batch_size} examples are one micro-batch: set "
            f"train.micro_batch_size to a smaller divisor of it (e.g. "
            f"{max(1, plan.per_device_batch_size // 2)}), or use optim.sam=sam"
        )
    return Sharpness(o.sam, sam_rho(o), o.sam_normalize)


def check_ghost_batchnorm(cfg: Config, plan: BatchPlan, model: nn.Module) -> None:
    """``model.ghost_batch_size`` that changes nothing is refused, not ignored."""
    ghost = cfg.model.ghost_batch_size
    if ghost is None:
        return
    if not batchnorm_modules(model):
        raise UserError(
            f"model.ghost_batch_size={ghost}: model {cfg.model.name} has no BatchNorm to split; "
            "remove the key or use a model with BatchNorm (model.batchnorm=true)"
        )
    if ghost >= plan.micro_batch_size:
        raise UserError(
            f"model.ghost_batch_size={ghost} is not smaller than the {plan.micro_batch_size} "
            "examples of each forward: it would be plain BatchNorm; use a smaller ghost batch"
        )


def wrap_for_training(model: nn.Module, cfg: Config, dist: DistContext) -> nn.Module:
    """DDP (world size > 1), then ``torch.compile`` if asked."""
    wrapped = model
    if dist.enabled:
        device = next(model.parameters()).device
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        mode = None if cfg.train.compile_mode == "default" else cfg.train.compile_mode
        wrapped = torch.compile(wrapped, mode=mode)
    return wrapped


def build_run(cfg: Config, dist: DistContext, device: torch.device) -> Run:
    """Data, model, optimizer, chain and schedule of ``cfg`` (a resolved, validated config)."""
    check_distributed(cfg, dist, device)
    plan = plan_batches(cfg.train.global_batch_size, cfg.train.micro_batch_size, dist.world_size)
    data = load_data(cfg, plan, device)
    model = assemble_model(cfg, data.input_shape, data.num_classes, device, dist.enabled)
    check_ghost_batchnorm(cfg, plan, model)
    lr = scale_lr(
        cfg.optim.lr, cfg.optim.base_batch_size, plan.global_batch_size, cfg.optim.scaling
    )
    context = ChainContext(
        plan.global_batch_size,
        plan.micro_batch_size,
        plan.accumulation_steps,
        lr,
        dist.world_size,
        dist.rank,
        dist.all_reduce_sum if dist.enabled else None,
    )
    setup = build_optimizer(model, cfg, lr, context)
    notes = data_notes(cfg.data.name, data.info)  # skipped files, missing classes
    if cfg.noise.kind != "isotropic":
        notes.append(calibrate(cfg, context).summary())
    n_steps = steps_per_epoch(
        len(data.train), plan.global_batch_size, cfg.train.drop_last, dist.world_size
    )
    epoch_scale = plan.global_batch_size / cfg.optim.base_batch_size
    epoch_scale = epoch_scale if cfg.train.scale_epochs else 1.0
    schedule = build_schedule(cfg.optim, lr, n_steps, cfg.train.epochs, epoch_scale)
    train_model = wrap_for_training(model, cfg, dist)
    parts = UpdateParts(
        train_model,
        setup.optimizer,
        setup.chain,
        world_size=dist.world_size,
        amp=cfg.train.amp,
        channels_last=cfg.train.channels_last,
        ddp=dist.enabled,
        grad_penalty=cfg.optim.grad_penalty
        if cfg.optim.grad_penalty_form == "double_backward"
        else 0.0,
        sharpness=sharpness(cfg, plan),
        loss=training_loss(cfg.train),
    )
    swa = None
    if cfg.train.swa_start_epoch is not None:
        start = round(cfg.train.swa_start_epoch * n_steps)
        swa = WeightAverage(model, start, cfg.train.swa_every_steps)
    return Run(
        cfg=cfg,
        dist=dist,
        device=device,
        plan=plan,
        data=data,
        model=model,
        optimizer=setup.optimizer,
        chain=setup.chain,
        schedule=schedule,
        parts=parts,
        lr=lr,
        steps_per_epoch=n_steps,
        total_epochs=round(cfg.train.epochs * epoch_scale),
        notes=notes,
        swa=swa,
        eval_loss=evaluation_loss(cfg.train),
    )
