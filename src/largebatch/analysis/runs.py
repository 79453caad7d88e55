"""Read a run directory back: its config, its trained model and its data (for analysis)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from largebatch import rundir
from largebatch.checkpoint import load_checkpoint
from largebatch.config import Config
from largebatch.data import DatasetBundle, build_dataset
from largebatch.errors import UserError
from largebatch.losses import LossFn, evaluation_loss, mean_loss
from largebatch.models.assembly import assemble_model
from largebatch.plugins import prepare_config


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    model: nn.Module
    """Built from the config, weights from ``checkpoints/last.pt`` (the SWA average when the run
    kept one: see :func:`reported_weights`), on ``device``, eval mode."""
    data: DatasetBundle
    device: torch.device
    checkpoint: dict[str, Any]
    loss_fn: LossFn = F.cross_entropy
    """The run's loss as the analysis takes it: the batch mean of its evaluation loss
    (:func:`largebatch.losses.evaluation_loss`: ``train.loss`` without label smoothing)."""


def reported_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights the run reports: the SWA average (``train.swa_start_epoch``, with the
    BatchNorm statistics of its last evaluation) when the checkpoint holds one, else the model."""
    averaged = checkpoint.get("swa_model")
    if averaged is None or int(averaged.get("n_averaged", 0)) == 0:
        return checkpoint["model"]
    return {k.removeprefix("module."): v for k, v in averaged.items() if k.startswith("module.")}


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a finished (or checkpointed) run for analysis; never trains."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    cfg = rundir.read_config(run_dir)
    try:  # its plugins imported, its names checked
        cfg = prepare_config(cfg)
    except UserError as e:
        raise UserError(f"{run_dir / 'config.yaml'}: {e}") from None
    ckpt_path = run_dir / rundir.CHECKPOINT
    if not ckpt_path.is_file():
        raise UserError(
            f"{run_dir} has no checkpoint ({rundir.CHECKPOINT}); train it first with "
            "'largebatch train CONFIG --out RUN' or resume it with --resume"
        )
    checkpoint = load_checkpoint(ckpt_path)
    device = torch.device(device)
    data = build_dataset(cfg.data, device)
    model = assemble_model(cfg, data.input_shape, data.num_classes, device)
    try:
        model.load_state_dict(reported_weights(checkpoint))
    except RuntimeError as e:
        raise UserError(
            f"{ckpt_path} does not match the model its config.yaml describes: "
            f"{str(e).splitlines()[0]}"
        ) from None
    model.eval()
    loss_fn = mean_loss(evaluation_loss(cfg.train))
    return LoadedRun(run_dir, cfg, model, data, device, checkpoint, loss_fn)
