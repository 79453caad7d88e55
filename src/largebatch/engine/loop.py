"""The training loop: epochs of optimizer updates, evaluation, records, checkpoints.

One explicit loop, read top to bottom in :func:`train`:

1. check the run directory (rank 0) and tell every rank the verdict; build the run
   (:func:`largebatch.engine.setup.build_run`); load the checkpoint when resuming;
2. for each epoch: the epoch's order (seed stream ``order``), cut into global batches, rank
   ``r``'s slice cut into micro-batches; one :func:`~largebatch.engine.update.optimizer_update`
   each; the LR of update ``t`` is ``schedule(t)``;
3. every ``train.log_every_steps`` updates and at each epoch's end the loss is read back from the
   device (the only host synchronisation) into ``steps.jsonl``; a non-finite loss stops the run as
   ``diverged``, naming the update where it first appeared;
4. after each epoch: BatchNorm running statistics averaged over ranks, loss and accuracy on the
   training and validation sets in eval mode, one line of ``metrics.jsonl``, and every
   ``train.checkpoint_every_epochs`` an atomic checkpoint.

SIGTERM (what batch schedulers and ``torchrun`` send) and Ctrl-C stop the run after the update in
flight: a checkpoint at that exact point, status ``stopped``; ``--resume`` continues bit-exactly.
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from largebatch import rundir
from largebatch.config import Config, config_to_dict, resolved
from largebatch.data.sampling import epoch_order, global_batches, local_slice, plan_batches
from largebatch.distributed import DistContext, init_distributed
from largebatch.engine import records, trackers
from largebatch.engine.evaluate import evaluate
from largebatch.engine.setup import Run, build_run, resolve_device
from largebatch.engine.stop import StopFlag, Stopped
from largebatch.engine.update import optimizer_update
from largebatch.errors import UserError
from largebatch.gradient.base import UpdateInfo
from largebatch.gradient.noise import GradientNoise
from largebatch.plugins import prepare_config
from largebatch.seeding import stream_seed


class Diverged(RuntimeError):
    """The loss became non-finite."""


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict[str, Any]


@dataclass
class Progress:
    """Where the run stands; what a checkpoint records besides the model and optimizer."""

    epoch: int = 0
    """Completed epochs."""
    step: int = 0
    """Completed optimizer updates (``t`` of the next update)."""
    position: int = 0
    """Updates done in the epoch in progress (non-zero only in a checkpoint taken mid-epoch)."""
    epoch_loss: torch.Tensor | None = None
    """Sum of per-example training losses in the epoch so far (device, float64, this rank)."""
    epoch_examples: int = 0
    epoch_time: float = 0.0
    window: list[torch.Tensor] = field(default_factory=list)
    """Each update's loss sum since the last read (device tensors: nothing is read per update)."""
    window_examples: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    grad_norm: torch.Tensor | None = None
    """The gradient norm of the last update before a read (device)."""
    stop_requested: bool = False
    """A stop signal reached some rank (known at reads, on every rank alike)."""
    rng: dict[str, Any] = field(default_factory=dict)
    """Mid-epoch resume only: this rank's generator states."""


# ----------------------------------------------------------------------------------------------
# The loop


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
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank if dist.enabled else device.index or 0)
        torch.backends.cudnn.benchmark = True
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    cfg = _check_names(cfg)
    trackers.require(trackers.selected(cfg.train))
    plan_batches(cfg.train.global_batch_size, cfg.train.micro_batch_size, dist.world_size)
    created = not run_dir.exists()
    lock, checkpoint = _open_run_dir(cfg, run_dir, resume, dist)
    try:
        try:
            run = build_run(cfg, dist, device)
        except UserError:
            if created and dist.is_main:  # leave no empty run directory behind a mistake
                (run_dir / records.LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
            raise
        progress = _restore(run, checkpoint)
        wall_before = 0.0
        if dist.is_main:
            wall_before = _write_start(run, run_dir, checkpoint)
        names = trackers.selected(cfg.train) if dist.is_main else []
        with trackers.session(run_dir, names, config_to_dict(run.cfg), progress.step):
            return _train_loop(run, run_dir, progress, stop_after_epochs, wall_before)
    finally:
        if lock is not None:
            lock.close()
        # Free the DDP wrapper (and the collectives' buffers it holds) now, while the process
        # group is alive: freed later, at interpreter exit, gloo's threads can abort the process.
        run = None  # noqa: F841
        gc.collect()


def _check_names(cfg: Config) -> Config:
    """Plugins imported, names checked, model args resolved: :func:`prepare_config`."""
    return prepare_config(cfg)


def _open_run_dir(cfg: Config, run_dir: Path, resume: bool, dist: DistContext):
    """Rank 0 alone reads the run directory (nodes need not share a filesystem) and sends every
    rank the verdict: an error to raise everywhere, or the checkpoint to start from."""
    verdict: tuple[Exception | None, dict | None] = (None, None)
    lock = None
    if dist.is_main:
        try:
            records.check_out_dir(run_dir)
            lock = records.lock_run_dir(run_dir)
            verdict = (None, records.prepare_run_dir(cfg, run_dir, resume))
        except UserError as e:
            verdict = (e, None)
    error, checkpoint = dist.broadcast_object(verdict)
    if error is not None:
        if lock is not None:
            lock.close()
        raise error
    return lock, checkpoint


def _write_start(run: Run, run_dir: Path, checkpoint: dict | None) -> float:
    for note in run.notes:
        print(note, file=sys.stderr)
    rundir.write_config(run_dir, run.cfg)
    resumed_at = int(checkpoint["step"]) if checkpoint else None
    rundir.record_environment(run_dir, run.device, run.dist.world_size, resumed_at)
    rundir.write_json(run_dir / "data.json", run.data_record())
    wall_before = records.start_records(run_dir, checkpoint)
    epoch = int(checkpoint["epoch"]) if checkpoint else 0
    row = (rundir.read_metrics(run_dir) or [None])[-1]
    step = int(checkpoint["step"]) if checkpoint else 0
    records.write_summary(run_dir, "running", row if epoch else None, step, wall_before)
    return wall_before


def _train_loop(
    run: Run, run_dir: Path, progress: Progress, stop_after: int | None, wall_before: float
) -> RunResult:
    dist, started = run.dist, time.time()
    end_epoch = run.total_epochs if stop_after is None else min(run.total_epochs, stop_after)
    history = rundir.read_metrics(run_dir) if dist.is_main else []
    last_row = history[-1] if history else None
    status, message = "completed", ""
    with StopFlag() as stop:
        try:
            while progress.epoch < end_epoch:
                _train_epoch(run, run_dir, progress, stop)
                last_row = _end_epoch(run, run_dir, progress, end_epoch, wall_before, started)
                if progress.stop_requested and progress.epoch < end_epoch:
                    raise Stopped(stop.signum or signal.SIGTERM)
            if end_epoch < run.total_epochs:
                status = "stopped"
                message = (
                    f"stopped after epoch {end_epoch} of {run.total_epochs}; continue with --resume"
                )
        except Diverged as e:
            status, message = "diverged", str(e)
        except Stopped as e:
            _save(run, run_dir, progress, _mid_epoch_states(run, progress))
            if dist.is_main:
                last_row = (rundir.read_metrics(run_dir) or [None])[-1]
            status = "stopped"
            message = (
                f"{e} at update {progress.step} (epoch {progress.epoch + 1}, "
                f"{progress.position} of {run.steps_per_epoch} updates); checkpointed there: "
                "continue with --resume"
            )
        except BaseException as e:
            wall = wall_before + time.time() - started
            if dist.is_main:
                records.write_summary(
                    run_dir, "failed", last_row, progress.step, wall, f"{type(e).__name__}: {e}"
                )
            raise
    summary: dict[str, Any] = {}
    if dist.is_main:
        wall = wall_before + time.time() - started
        extra = {"signal": stop.signum} if stop.signum else {}
        summary = records.write_summary(
            run_dir, status, last_row, progress.step, wall, message, **extra
        )
    # Every rank gets here together (divergence and stops are decided on all-reduced values),
    # so every rank returns rank 0's summary; callers such as the CLI read it on each rank.
    summary = dist.broadcast_object(summary)
    return RunResult(run_dir, status, summary)


def _epoch_generators(run: Run, epoch: int) -> torch.Generator:
    """Seed the epoch's augmentation generator and the global RNG (dropout) from their streams."""
    seed, rank = run.cfg.train.seed, run.dist.rank
    aug = torch.Generator(device=run.device)
    aug.manual_seed(stream_seed(seed, "augment", epoch, rank))
    torch.manual_seed(stream_seed(seed, "dropout", epoch, rank))
    return aug


def _train_epoch(run: Run, run_dir: Path, progress: Progress, stop: StopFlag) -> None:
    cfg, dist, plan = run.cfg, run.dist, run.plan
    epoch = progress.epoch
    run.model.train()
    batches = global_batches(
        epoch_order(len(run.data.train), cfg.train.seed, epoch),
        plan.global_batch_size,
        cfg.train.drop_last,
        dist.world_size,
    )
    aug = _epoch_generators(run, epoch)
    if progress.position:
        _set_rng(progress.rng, aug)  # resuming mid-epoch: the generators as they were
    else:
        _reset_epoch(progress, run.device)
    show = _progress_enabled(cfg, dist)
    bar = records.progress_bar(show, len(batches), epoch, run.total_epochs)
    t0 = time.perf_counter() - progress.epoch_time
    log_every = cfg.train.log_every_steps
    for i in range(progress.position, len(batches)):
        batch = batches[i]
        micro = local_slice(batch, dist.rank, dist.world_size).split(plan.micro_batch_size)
        info = UpdateInfo(step=progress.step, lr=run.schedule(progress.step))
        xs = run.data.train.iter_batches(micro, cfg.data.augment, aug)
        reading = (progress.step + 1) % log_every == 0 or i == len(batches) - 1
        out = optimizer_update(
            run.parts, xs, len(batch), info, len(micro), measure_grad_norm=reading
        )
        _account(progress, out.loss_sum, len(batch))
        progress.grad_norm = out.grad_norm
        progress.step += 1
        progress.position = i + 1
        if run.swa is not None:
            run.swa.after_update(run.model, progress.step)
        progress.epoch_time = time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        stop.poll()
        # Under DDP every rank must read at the same updates (the read is a collective), so a
        # signal is acted on at the next common read. A single process stops at once, without a
        # read: the updates since the last read ride in the checkpoint (``window``), so the
        # resumed run's next row averages the same updates as an uninterrupted run's.
        if reading:
            _read(run, run_dir, progress, stop, bar)
        elif stop.signum is not None and not dist.enabled:
            progress.stop_requested = True
        if cfg.train.eval_every_steps and progress.step % cfg.train.eval_every_steps == 0:
            _eval_steps(run, run_dir, progress)
        if progress.stop_requested and progress.position < len(batches):
            progress.rng = _get_rng(aug)
            raise Stopped(stop.signum or signal.SIGTERM)
    if bar is not None:
        bar.close()
    progress.epoch, progress.position = epoch + 1, 0


def _reset_epoch(progress: Progress, device: torch.device) -> None:
    progress.epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
    progress.window = []
    progress.epoch_examples = progress.window_examples = 0
    progress.epoch_time = 0.0
    progress.window_start = time.perf_counter()


def _account(progress: Progress, loss_sum: torch.Tensor, examples: int) -> None:
    """Keep an update's loss (a device tensor) for the next read: no kernel, no host sync."""
    progress.window.append(loss_sum)
    progress.epoch_examples += examples
    progress.window_examples += examples


def _read(run: Run, run_dir: Path, progress: Progress, stop: StopFlag, bar: Any) -> None:
    """Read the loss back (all ranks together): record it, raise :class:`Diverged` if it is not
    finite, and note whether a stop signal reached any rank."""
    dist = run.dist
    assert progress.epoch_loss is not None and progress.window
    losses = torch.stack(progress.window)  # (updates since the last read,)
    window_sum = losses.sum()
    progress.epoch_loss += window_sum
    signalled = torch.tensor(float(stop.signum is not None), dtype=torch.float64)
    sums = dist.all_reduce_sum(torch.stack([window_sum, signalled.to(run.device)]))
    sums = sums.tolist()
    progress.stop_requested = sums[1] > 0
    loss = sums[0] / progress.window_examples
    bad_step = _first_bad(dist, losses, progress.step - len(losses))
    elapsed = max(time.perf_counter() - progress.window_start, 1e-9)
    lr = run.schedule(progress.step - 1)
    row = {
        "step": progress.step,
        "epoch": progress.epoch + 1,
        "loss": loss,
        "lr": lr,
        "noise_variance": _noise_variance(run, progress.step - 1),
        "examples_per_s": progress.window_examples / elapsed,
    }
    if progress.grad_norm is not None:
        row["grad_norm"] = float(progress.grad_norm)
    if dist.is_main:
        rundir.append_jsonl(run_dir / rundir.STEPS, row, durable=False)
        trackers.log(run_dir, "train", row, progress.step)
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}", ex_s=f"{row['examples_per_s']:.0f}")
    if not math.isfinite(loss) or bad_step >= 0:
        at = bad_step + 1 if bad_step >= 0 else progress.step
        raise Diverged(
            f"the training loss became {loss} at update {at} (noticed at update {progress.step}, "
            f"epoch {progress.epoch + 1}) with lr {run.schedule(at - 1):g}; lower optim.lr, add "
            "warmup (optim.warmup_epochs) or use a smaller batch"
        )
    progress.window = []
    progress.window_examples = 0
    progress.window_start = time.perf_counter()


def _first_bad(dist: DistContext, losses: torch.Tensor, first_step: int) -> int:
    """``t`` of the first update (over all ranks) whose loss was not finite, or -1."""
    big = torch.iinfo(torch.int64).max
    finite = torch.isfinite(losses)
    index = torch.argmin(finite.to(torch.int64))  # the first non-finite one, if there is one
    local = torch.where(finite.all(), big, index + first_step).to(torch.int64)
    value = int(dist.all_reduce_min(local))
    return -1 if value == big else value


def _noise_variance(run: Run, t: int) -> float:
    """The variance per entry the noise added at update ``t`` (0 without noise)."""
    noise = run.chain.get("noise")
    if isinstance(noise, GradientNoise):
        return noise.variance(t) if t >= 0 and noise.alpha > 0 else 0.0
    for transform in run.chain.transforms:
        measured = getattr(transform, "injected_variance", None)
        if measured is not None:
            return float(measured())
    return 0.0


def _eval_steps(run: Run, run_dir: Path, progress: Progress) -> None:
    cfg = run.cfg
    val_loss, val_acc = evaluate(
        _model_to_evaluate(run),
        run.data.val,
        cfg.train.eval_batch_size,
        run.dist,
        cfg.train.amp,
        cfg.train.channels_last,
        loss_fn=run.eval_loss,
    )
    run.model.train()
    if run.dist.is_main:
        row = {
            "step": progress.step,
            "epoch": progress.epoch + 1,
            "val_loss": val_loss,
            "val_acc": val_acc,
        }
        rundir.append_jsonl(run_dir / rundir.EVALS, row, durable=False)
        trackers.log(run_dir, "eval", row, progress.step)


def _model_to_evaluate(run: Run) -> torch.nn.Module:
    """The model the run reports, in eval mode: the weight average once it holds one, else the
    trained model, with BatchNorm statistics averaged over ranks."""
    cfg = run.cfg
    run.model.eval()
    run.dist.average_buffers(run.model)  # evaluate and save statistics of all ranks' data
    if run.swa is not None and run.swa.count > 0:
        return run.swa.model_for_eval(
            run.data.train, cfg.train.eval_batch_size, run.dist, cfg.train.channels_last
        )
    return run.model


def _end_epoch(
    run: Run, run_dir: Path, progress: Progress, end_epoch: int, wall_before: float, started: float
) -> dict[str, Any]:
    cfg, dist = run.cfg, run.dist
    if run.swa is not None:
        run.swa.after_epoch(run.model, progress.step)
    model = _model_to_evaluate(run)
    args = (cfg.train.eval_batch_size, dist, cfg.train.amp, cfg.train.channels_last)
    train_loss, train_acc = float("nan"), float("nan")
    if cfg.train.eval_train:
        train_loss, train_acc = evaluate(model, run.data.train, *args, loss_fn=run.eval_loss)
    val_loss, val_acc = evaluate(model, run.data.val, *args, loss_fn=run.eval_loss)
    assert progress.epoch_loss is not None
    running = float(dist.all_reduce_sum(progress.epoch_loss.clone()))
    row = {
        "epoch": progress.epoch,
        "step": progress.step,
        "lr": run.schedule(progress.step - 1),
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "gap": train_acc - val_acc,
        "running_loss": running / max(progress.epoch_examples, 1),
        "noise_variance": _noise_variance(run, progress.step - 1),
        "examples_per_s": progress.epoch_examples / max(progress.epoch_time, 1e-9),
        "epoch_time_s": progress.epoch_time,
    }
    if run.swa is not None:
        row["swa_averages"] = run.swa.count
    if dist.is_main:
        rundir.append_metrics(run_dir, row)
        trackers.log(run_dir, "epoch", row, progress.step)
        if _progress_enabled(cfg, dist):
            print(records.format_row(row, run.total_epochs), file=sys.stderr)
        done = progress.epoch
        if done % cfg.train.checkpoint_every_epochs == 0 or done == end_epoch:
            _save(run, run_dir, progress)
        wall = wall_before + time.time() - started
        records.write_summary(run_dir, "running", row, progress.step, wall)
    return row


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _mid_epoch_states(run: Run, progress: Progress) -> list[Any] | None:
    """Every rank's generator states and loss sum, gathered for a mid-epoch checkpoint (all
    ranks call this together)."""
    if not progress.position:
        return None
    assert progress.epoch_loss is not None
    window = torch.stack(progress.window).cpu() if progress.window else None
    mine = {
        "rng": progress.rng,
        "epoch_loss": float(progress.epoch_loss),
        "window": window,  # the loss sums of the updates since the last read
        "window_examples": progress.window_examples,
    }
    return run.dist.all_gather_object(mine)


def _save(run: Run, run_dir: Path, progress: Progress, ranks: list[Any] | None = None) -> None:
    """Rank 0 writes the state after ``progress``: an epoch's end, or mid-epoch on a stop
    (``ranks``: each rank's generator states and loss sum)."""
    if not run.dist.is_main:
        return
    state: dict[str, Any] = {
        "epoch": progress.epoch,
        "step": progress.step,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "transforms": run.chain.state_dict(),
        "world_size": run.dist.world_size,
    }
    if run.swa is not None:
        state["swa_model"] = run.swa.state_dict()
    if ranks is not None:
        state["mid_epoch"] = {
            "position": progress.position,
            "ranks": ranks,
            "epoch_examples": progress.epoch_examples,
            "epoch_time": progress.epoch_time,
        }
    records.save(run_dir, state)


def _restore(run: Run, checkpoint: dict | None) -> Progress:
    progress = Progress()
    _reset_epoch(progress, run.device)
    if checkpoint is None:
        return progress
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.chain.load_state_dict(checkpoint.get("transforms") or {})
    if run.swa is not None and "swa_model" in checkpoint:
        run.swa.load_state_dict(checkpoint["swa_model"])
    progress.epoch, progress.step = int(checkpoint["epoch"]), int(checkpoint["step"])
    mid = checkpoint.get("mid_epoch")
    if mid is not None:
        if checkpoint.get("world_size", 1) != run.dist.world_size:
            raise UserError(
                "this checkpoint was taken mid-epoch by a stop signal at world size "
                f"{checkpoint.get('world_size')}; resume it at that world size (or let it reach "
                "the end of the epoch first)"
            )
        mine = mid["ranks"][run.dist.rank]
        progress.position = int(mid["position"])
        progress.rng = mine["rng"]
        progress.epoch_loss.fill_(mine["epoch_loss"])  # type: ignore[union-attr]
        if mine.get("window") is not None:
            progress.window = list(mine["window"].to(run.device).unbind())
            progress.window_examples = int(mine["window_examples"])
        progress.epoch_examples = int(mid["epoch_examples"])
        progress.epoch_time = float(mid["epoch_time"])
    return progress


def _get_rng(aug: torch.Generator) -> dict[str, Any]:
    state = {"augment": aug.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and aug.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(aug.device)
    return state


def _set_rng(state: dict[str, Any], aug: torch.Generator) -> None:
    aug.set_state(state["augment"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], aug.device)


def _progress_enabled(cfg: Config, dist: DistContext) -> bool:
    if not dist.is_main:
        return False
    if cfg.train.progress is None:
        return sys.stderr.isatty()
    return cfg.train.progress
