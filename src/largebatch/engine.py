"""The training engine: one explicit loop from a config to a run directory.

Everything that touches a gradient lives here or in :mod:`largebatch.gradient.pipeline` (which
writes down the order of the gradient transforms). One optimizer update at global batch ``B``:

1. The epoch's order is one permutation of the training set, drawn from ``(train.seed, epoch)``;
   it is cut into global batches of ``B`` (the last partial one dropped or kept per
   ``train.drop_last``). Rank ``r`` of ``W`` takes the ``r``-th of ``W`` equal slices of each.
2. The rank's slice is cut into micro-batches of ``train.micro_batch_size``. Each micro-batch loss
   (a mean over its examples) is multiplied by ``m * W / B`` (``m`` its size), so the summed
   gradients equal the gradient of the mean loss over the global batch, whether it was computed in
   one step, in ``k`` accumulated steps or on ``W`` ranks. DDP's all-reduce (an average) runs only
   on the last micro-batch (``no_sync`` for the others).
3. The gradient pipeline (clip, noise, trust ratio), ``optimizer.step()``, the post-step noise.
4. ``t`` (completed updates) advances; the LR of the next update is ``schedule(t)``.

After each epoch: loss and accuracy on the whole training set and the validation set in eval mode
(the generalization gap is ``train_acc - val_acc``), one line of ``metrics.jsonl``, and every
``train.checkpoint_every_epochs`` epochs an atomic checkpoint. A non-finite loss stops the run as
``diverged``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from largebatch import rundir
from largebatch.checkpoint import load_checkpoint, save_checkpoint
from largebatch.config import Config, config_to_dict, resolved
from largebatch.data import DatasetBundle, Split, build_dataset
from largebatch.distributed import DistContext, init_distributed
from largebatch.errors import UserError
from largebatch.models import build_model
from largebatch.optim import build_optimizer, build_schedule, scale_lr

# Keys that may differ between a run's stored config and the one given with --resume: they
# change where or how fast a run goes, or extend it, not what it computes up to now.
RESUMABLE_CHANGES = {
    "train.epochs",
    "train.progress",
    "train.threads",
    "train.device",
    "train.eval_batch_size",
    "train.checkpoint_every_epochs",
    "data.root",
    "data.num_workers",
    "data.cache_dir",
}


class Diverged(RuntimeError):
    """The loss became non-finite."""


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    per_device_batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    world_size: int


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict[str, Any]


def plan_batches(
    global_batch_size: int, micro_batch_size: int | None, world_size: int
) -> BatchPlan:
    """Derive the per-device batch and the accumulation steps from the global batch."""
    if global_batch_size % world_size:
        raise UserError(
            f"train.global_batch_size={global_batch_size} is not divisible by the world size "
            f"{world_size}; choose a global batch that is a multiple of {world_size}"
        )
    per_device = global_batch_size // world_size
    micro = per_device if micro_batch_size is None else micro_batch_size
    if micro > per_device or per_device % micro:
        raise UserError(
            f"train.micro_batch_size={micro} must divide the per-device batch {per_device} "
            f"(= global {global_batch_size} / world size {world_size})"
        )
    return BatchPlan(global_batch_size, per_device, micro, per_device // micro, world_size)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: a pure function of the seed and the epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=g)


def global_batches(order: torch.Tensor, batch_size: int, drop_last: bool, world_size: int = 1):
    """Cut an epoch's order into global batches. A last partial batch is kept only if
    ``drop_last`` is False and it has at least one example per rank."""
    batches = list(order.split(batch_size))
    if batches and len(batches[-1]) < batch_size:
        if drop_last or len(batches[-1]) < world_size:
            batches.pop()
    return batches


def local_slice(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s disjoint share of a global batch (contiguous, equal up to one example)."""
    return torch.tensor_split(batch, world_size)[rank]


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={spec}: CUDA is not available here; use cpu or auto")
    return device


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int, dist: DistContext, amp: str = "none"
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole split, in the model's current mode.

    Under DDP each rank evaluates every ``world_size``-th example and the sums are all-reduced.
    """
    indices = torch.arange(dist.rank, len(split), dist.world_size)
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in split.iter_batches(indices.split(batch_size)):
        with _autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum().double()
    totals = dist.all_reduce_sum(torch.stack([loss_sum, correct]))
    n = len(split)
    return float(totals[0]) / n, float(totals[1]) / n


def _autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = []
    for section in a:
        for key in a[section]:
            if a[section][key] != b.get(section, {}).get(key):
                keys.append(f"{section}.{key}")
    return keys


def _progress_enabled(cfg: Config, dist: DistContext) -> bool:
    if not dist.is_main:
        return False
    if cfg.train.progress is None:
        return sys.stderr.isatty()
    return cfg.train.progress


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> dict | None:
    """Check the run directory against the request; on resume return the stored checkpoint."""
    config_path = run_dir / "config.yaml"
    if not resume:
        if config_path.exists():
            raise UserError(
                f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                "another --out"
            )
        return None
    if not config_path.exists():
        return None  # nothing to resume: start fresh
    stored = rundir.read_config(run_dir)
    changed = _config_diff(config_to_dict(resolved(stored)), config_to_dict(resolved(cfg)))
    bad = [k for k in changed if k not in RESUMABLE_CHANGES]
    if bad:
        raise UserError(
            f"--resume: the config differs from the one stored in {run_dir} in {', '.join(bad)}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume"
        )
    ckpt_path = run_dir / rundir.CHECKPOINT
    if not ckpt_path.exists():
        return None
    return load_checkpoint(ckpt_path)


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    stop_after_epochs: int | None = None,
) -> RunResult:
    """Train per ``cfg`` into ``run_dir``; return the run's status and summary.

    Args:
        cfg: a validated config.
        run_dir: the run directory (created; must not hold a run unless ``resume``).
        resume: continue from ``run_dir/checkpoints/last.pt`` (fresh start if there is none).
        stop_after_epochs: stop (status ``stopped``) once this many epochs are done in total,
            as a preemptible job would; ``--resume`` continues it to ``train.epochs``.

    Raises:
        UserError: a config/data/run-directory mistake (before any training happens).
    """
    cfg = resolved(cfg)
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    plan = plan_batches(cfg.train.global_batch_size, cfg.train.micro_batch_size, dist.world_size)
    if dist.enabled and cfg.model.sync_batchnorm and device.type != "cuda":
        # PyTorch's SyncBatchNorm only runs on GPUs; without this check DDP raises a ValueError.
        raise UserError(
            "model.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm does not run "
            f"on {device.type}); set model.sync_batchnorm=false for per-replica BatchNorm "
            "statistics (= Ghost BatchNorm over the per-device batch)"
        )

    # Rank 0 alone reads the run directory (nodes need not share a filesystem) and sends every
    # rank the verdict: an error to raise everywhere, or the checkpoint to start from.
    prepared: tuple[UserError | None, dict | None] = (None, None)
    if dist.is_main:
        try:
            prepared = (None, prepare_run_dir(cfg, run_dir, resume))
        except UserError as e:
            prepared = (e, None)
    error, checkpoint = dist.broadcast_object(prepared)
    if error is not None:
        raise error
    data = build_dataset(cfg.data, device)
    if len(data.train) < plan.global_batch_size and cfg.train.drop_last:
        raise UserError(
            f"train.global_batch_size={plan.global_batch_size} is larger than the training set "
            f"({len(data.train)} examples): every batch would be dropped; use a smaller batch "
            "or train.drop_last=false"
        )

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    if cfg.model.ghost_batch_size is not None:
        from largebatch.models.ghost_batchnorm import convert_to_ghost_batchnorm

        model = convert_to_ghost_batchnorm(model, cfg.model.ghost_batch_size)
    if dist.enabled and cfg.model.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)

    lr = scale_lr(
        cfg.optim.lr, cfg.optim.base_batch_size, plan.global_batch_size, cfg.optim.scaling
    )
    setup = build_optimizer(model, cfg.optim, cfg.noise, lr)
    optimizer, pipeline = setup.optimizer, setup.pipeline
    steps_per_epoch = len(
        global_batches(
            torch.arange(len(data.train)),
            plan.global_batch_size,
            cfg.train.drop_last,
            dist.world_size,
        )
    )
    epoch_scale = 1.0
    if cfg.train.scale_epochs:
        epoch_scale = plan.global_batch_size / cfg.optim.base_batch_size
    total_epochs = round(cfg.train.epochs * epoch_scale)
    schedule = build_schedule(cfg.optim, lr, steps_per_epoch, cfg.train.epochs, epoch_scale)

    start_epoch, step = 0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        pipeline.load_state_dict(checkpoint["transforms"])
        start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])

    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        train_model = torch.compile(train_model)

    started = time.time()
    wall_before = 0.0
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(run_dir, cfg)
        rundir.write_json(run_dir / "env.json", rundir.environment(device, dist.world_size))
        rundir.write_json(
            run_dir / "data.json",
            {
                **data.info,
                "batch_plan": dataclasses.asdict(plan),
                "scaled_lr": lr,
                "total_epochs": total_epochs,
                "steps_per_epoch": steps_per_epoch,
            },
        )
        if checkpoint is not None:
            rundir.truncate_metrics(run_dir, start_epoch)
            previous = run_dir / "summary.json"
            if previous.exists():
                wall_before = float(rundir.read_json(previous).get("wall_time_s", 0.0))
        elif (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
        _write_summary(run_dir, "running", start_epoch, step, None, wall_before, "")

    history = rundir.read_metrics(run_dir) if dist.is_main else []
    last_row: dict[str, Any] | None = history[-1] if history else None
    end_epoch = total_epochs
    if stop_after_epochs is not None:
        end_epoch = min(end_epoch, stop_after_epochs)
    status, message = "completed", ""
    show_progress = _progress_enabled(cfg, dist)
    try:
        for epoch in range(start_epoch, end_epoch):
            model.train()
            batches = global_batches(
                epoch_order(len(data.train), cfg.train.seed, epoch),
                plan.global_batch_size,
                cfg.train.drop_last,
                dist.world_size,
            )
            aug_gen = torch.Generator(device=device)
            aug_gen.manual_seed((cfg.train.seed * 1_000_003 + epoch) * 64 + dist.rank)
            # Dropout draws from the global RNG: seeded per (seed, epoch, rank), so each rank
            # drops different units and a resumed epoch draws what the uninterrupted one drew.
            torch.manual_seed(((cfg.train.seed * 1_000_003 + epoch) * 64 + dist.rank) * 2 + 1)
            bar = _progress_bar(show_progress, len(batches), epoch, total_epochs)
            running = 0.0
            examples = 0
            t0 = time.perf_counter()
            for batch in batches:
                current_lr = schedule(step)
                for group in optimizer.param_groups:
                    group["lr"] = current_lr
                optimizer.zero_grad(set_to_none=True)
                local = local_slice(batch, dist.rank, dist.world_size)
                micro_batches = local.split(plan.micro_batch_size)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                scale = dist.world_size / len(batch)
                for i, (x, y) in enumerate(
                    data.train.iter_batches(micro_batches, cfg.data.augment, aug_gen)
                ):
                    if cfg.train.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    last = i == len(micro_batches) - 1
                    sync = (
                        contextlib.nullcontext()
                        if last or not dist.enabled
                        else train_model.no_sync()
                    )
                    with sync:
                        with _autocast(device, cfg.train.amp):
                            loss = F.cross_entropy(train_model(x).float(), y)
                        (loss * (len(y) * scale)).backward()
                    loss_sum += loss.detach().double() * len(y)
                pipeline.before_step()
                optimizer.step()
                pipeline.after_step(current_lr)
                step += 1
                examples += len(batch)
                batch_loss = float(dist.all_reduce_sum(loss_sum)) / len(batch)
                if not math.isfinite(batch_loss):
                    raise Diverged(
                        f"the training loss became {batch_loss} at update {step} (epoch "
                        f"{epoch + 1}) with lr {current_lr:g}; lower optim.lr, add warmup "
                        "(optim.warmup_epochs) or use a smaller batch"
                    )
                running += batch_loss * len(batch)
                if bar is not None:
                    bar.update(1)
                    rate = examples / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(
                        loss=f"{batch_loss:.4f}",
                        lr=f"{current_lr:.4g}",
                        ex_s=f"{rate:.0f}",
                        refresh=False,
                    )
            epoch_time = time.perf_counter() - t0
            if bar is not None:
                bar.close()

            model.eval()
            dist.broadcast_buffers(model)  # evaluate the model rank 0 checkpoints
            if cfg.train.eval_train:
                train_loss, train_acc = evaluate(
                    model, data.train, cfg.train.eval_batch_size, dist, cfg.train.amp
                )
            else:
                train_loss, train_acc = float("nan"), float("nan")
            val_loss, val_acc = evaluate(
                model, data.val, cfg.train.eval_batch_size, dist, cfg.train.amp
            )
            row = {
                "epoch": epoch + 1,
                "step": step,
                "lr": schedule(step - 1),
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "gap": train_acc - val_acc,
                "running_loss": running / max(examples, 1),
                "noise_variance": pipeline.noise.variance(step - 1) if pipeline.noise else 0.0,
                "examples_per_s": examples / epoch_time if epoch_time > 0 else float("nan"),
                "epoch_time_s": epoch_time,
            }
            last_row = row
            if dist.is_main:
                rundir.append_metrics(run_dir, row)
                if show_progress:
                    print(_format_row(row, total_epochs), file=sys.stderr)
                done = epoch + 1
                if done % cfg.train.checkpoint_every_epochs == 0 or done == end_epoch:
                    _save(run_dir, model, optimizer, pipeline, done, step, dist.world_size)
                _write_summary(
                    run_dir, "running", done, step, row, wall_before + time.time() - started, ""
                )
        if end_epoch < total_epochs:
            status = "stopped"
            message = f"stopped after epoch {end_epoch} of {total_epochs}; continue with --resume"
    except Diverged as e:
        status, message = "diverged", str(e)
    except KeyboardInterrupt:
        status, message = "failed", "interrupted; continue from the last checkpoint with --resume"
        _finish(run_dir, dist, status, message, last_row, step, wall_before + time.time() - started)
        raise
    except Exception as e:
        status, message = "failed", f"{type(e).__name__}: {e}"
        _finish(run_dir, dist, status, message, last_row, step, wall_before + time.time() - started)
        raise
    summary = _finish(
        run_dir, dist, status, message, last_row, step, wall_before + time.time() - started
    )
    # Every rank gets here together (a divergence is seen on all ranks: the loss is all-reduced),
    # so every rank can return rank 0's summary; callers such as the CLI read it on each rank.
    summary = dist.broadcast_object(summary)
    return RunResult(run_dir, status, summary)


def _finish(run_dir, dist, status, message, last_row, step, wall) -> dict[str, Any]:
    if not dist.is_main:
        return {}
    epochs_done = last_row["epoch"] if last_row else 0
    return _write_summary(run_dir, status, epochs_done, step, last_row, wall, message)


def _save(run_dir, model, optimizer, pipeline, epoch, step, world_size) -> None:
    save_checkpoint(
        run_dir / rundir.CHECKPOINT,
        {
            "epoch": epoch,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "transforms": pipeline.state_dict(),
            "world_size": world_size,
        },
    )


def _write_summary(run_dir, status, epochs_done, step, row, wall, message) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": status,
        "epochs_completed": epochs_done,
        "step": step,
        "final": row,
        "best_val_acc": None,
        "wall_time_s": wall,
        "message": message,
    }
    history = rundir.read_metrics(run_dir)
    if history:
        summary["best_val_acc"] = max(r["val_acc"] for r in history)
    rundir.write_json(run_dir / "summary.json", summary)
    return summary


def _progress_bar(enabled: bool, total: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False, file=sys.stderr
    )


def _format_row(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  train {row['train_loss']:.4f} "
        f"/ {100 * row['train_acc']:.2f}%  val {row['val_loss']:.4f} / {100 * row['val_acc']:.2f}%"
        f"  {row['examples_per_s']:.0f} ex/s"
    )


def build_for_inference(cfg: Config, device: torch.device) -> tuple[nn.Module, DatasetBundle]:
    """The model (untrained) and data of a config, as the engine builds them."""
    data = build_dataset(cfg.data, device)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    if cfg.model.ghost_batch_size is not None:
        from largebatch.models.ghost_batchnorm import convert_to_ghost_batchnorm

        model = convert_to_ghost_batchnorm(model, cfg.model.ghost_batch_size)
    return model.to(device), data
