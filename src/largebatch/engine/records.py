"""What a run writes: the run directory's checks on start, its records and checkpoints.

Only global rank 0 calls these (the other ranks never touch the run directory). Files are written
atomically or appended with ``fsync``; see :mod:`largebatch.rundir` for the layout.

On ``--resume`` the config may differ from the stored one only in :data:`RESUMABLE_CHANGES`.
``train.epochs`` may change (extend or shorten a run) when the schedule's learning rates over the
updates already done do not depend on the length: ``constant``, ``multistep`` (fixed milestones)
and ``paper`` (its milestones 25, 40, 50, ... below the old length are those of any longer run),
so the extended run is exactly the run of the new length. ``cosine`` decays over the whole run,
so a new length is refused: resume with the stored length, or train the new length afresh.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from largebatch import rundir
from largebatch.checkpoint import load_checkpoint, save_checkpoint
from largebatch.config import Config, config_to_dict, resolved, run_epochs
from largebatch.errors import UserError

# Keys that may differ between a run's stored config and the one given with --resume: they
# change where or how fast a run goes, or extend it, not what it computes up to now
# (train.epochs: not under a schedule that depends on the length, LENGTH_DEPENDENT_SCHEDULES).
RESUMABLE_CHANGES = {
    "train.epochs",
    "train.progress",
    "train.threads",
    "train.device",
    "train.eval_batch_size",
    "train.checkpoint_every_epochs",
    "train.log_every_steps",
    "train.plugins",
    "data.root",
    "data.num_workers",
    "data.cache_dir",
}
LENGTH_DEPENDENT_SCHEDULES = {"cosine"}
LOCK = rundir.LOCK
# What largebatch.checkpoint.atomic_write_bytes writes before its rename: ".<name>.tmp-<pid>".
_TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [
        f"{section}.{key}"
        for section in a
        for key in a[section]
        if a[section][key] != b.get(section, {}).get(key)
    ]


def check_out_dir(run_dir: Path) -> None:
    """``--out`` must be a directory we can create and write (checked before data is built)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is an existing file; choose a directory path")
    rundir.make_out_folder(run_dir)
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"--out {run_dir} is not writable; choose another path")


def lock_run_dir(run_dir: Path) -> Any:
    """Hold an OS lock on ``RUN/.lock`` for the life of the process; a second run into the same
    directory stops with an error naming the holder. The OS drops the lock when the holder dies
    (kill -9 included), so a crashed run never blocks ``--resume``."""
    handle = rundir.hold_lock(
        run_dir,
        f"{run_dir} is in use by a running training process (pid {{pid}}); wait for it to "
        "finish or choose another --out",
    )
    remove_stale_temp_files(run_dir)
    return handle


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files an atomic write killed midway left (``.last.pt.tmp-<pid>``,
    ``.summary.json.tmp-<pid>``, ...) in the run directory and its ``checkpoints/``.

    Called with the run directory's lock held: no other training process writes there, so every
    such file but this process's own is an orphan. ``analysis/`` is left alone (``largebatch
    analyze`` may be writing there)."""
    removed = []
    for folder in (run_dir, run_dir / rundir.CHECKPOINT.parent):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TEMP_FILE.match(path.name)
            if match and int(match.group(1)) != os.getpid() and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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
    if "train.epochs" in changed and not bad:
        _check_length_change(stored, cfg, run_dir)
    if bad:
        raise UserError(
            f"--resume: the config differs from the one stored in {run_dir} in {', '.join(bad)}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume"
        )
    ckpt_path = run_dir / rundir.CHECKPOINT
    if not ckpt_path.exists() and not ckpt_path.is_symlink():  # a dangling link is an error
        return None
    checkpoint = load_checkpoint(ckpt_path)
    _check_not_shorter(stored, cfg, checkpoint, run_dir)
    return checkpoint


def _check_not_shorter(stored: Config, cfg: Config, checkpoint: Any, run_dir: Path) -> None:
    """A run cannot be resumed to fewer epochs than it already made: it would report the
    checkpoint's model as a shorter run and record a config it did not follow."""
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        return  # load_checkpoint's and the loop's own checks name what is wrong
    done = int(checkpoint["epoch"])
    needed = done + (1 if checkpoint.get("mid_epoch") else 0)  # a partial epoch is under way
    if run_epochs(cfg.train, cfg.optim) >= needed:
        return
    least = next(
        e
        for e in range(1, max(needed, 1) * max(1, cfg.optim.base_batch_size) + 2)
        if run_epochs(replace(cfg.train, epochs=e), cfg.optim) >= needed
    )
    made = f"{done} epochs" + (" and part of the next" if needed > done else "")
    raise UserError(
        f"--resume: the run in {run_dir} already made {made} (its config says "
        f"train.epochs={stored.train.epochs}), so it cannot be resumed to "
        f"train.epochs={cfg.train.epochs}; give train.epochs>={least}, or "
        "train the shorter run afresh into another --out"
    )


def _check_length_change(stored: Config, cfg: Config, run_dir: Path) -> None:
    schedule = stored.optim.schedule
    if schedule not in LENGTH_DEPENDENT_SCHEDULES:
        return
    old, new = stored.train.epochs, cfg.train.epochs
    raise UserError(
        f"--resume: train.epochs changed from {old} to {new}, but the {schedule} schedule of the "
        f"run in {run_dir} depends on the run's length (the updates already done had other "
        f"learning rates than a {new}-epoch run would): resume with train.epochs={old}, or train "
        f"{new} epochs afresh into another --out (constant, multistep and paper schedules may "
        "be extended)"
    )


def start_records(run_dir: Path, checkpoint: dict | None) -> float:
    """Cut the records back to what the checkpoint covers; return the wall time already spent."""
    if checkpoint is None:
        for name in (rundir.METRICS, rundir.STEPS, rundir.EVALS):
            (run_dir / name).unlink(missing_ok=True)
        return 0.0
    rundir.truncate_metrics(run_dir, int(checkpoint["epoch"]))
    rundir.truncate_jsonl(run_dir / rundir.STEPS, "step", int(checkpoint["step"]))
    rundir.truncate_jsonl(run_dir / rundir.EVALS, "step", int(checkpoint["step"]))
    previous = run_dir / "summary.json"
    if previous.exists():
        return float(rundir.read_json(previous).get("wall_time_s", 0.0))
    return 0.0


def save(run_dir: Path, state: dict[str, Any]) -> None:
    save_checkpoint(run_dir / rundir.CHECKPOINT, state)


def write_summary(
    run_dir: Path,
    status: str,
    row: dict[str, Any] | None,
    step: int,
    wall: float,
    message: str = "",
    **extra: Any,
) -> dict[str, Any]:
    history = rundir.read_metrics(run_dir)
    summary: dict[str, Any] = {
        "status": status,
        "epochs_completed": row["epoch"] if row else 0,
        "step": step,
        "final": row,
        "best_val_acc": max(r["val_acc"] for r in history) if history else None,
        "wall_time_s": wall,
        "message": message,
        **extra,
    }
    rundir.write_json(run_dir / "summary.json", summary)
    return summary


def data_notes(dataset: str, info: dict[str, Any]) -> list[str]:
    """One-line facts from the dataset builder's report that change what the run trains on, to
    print at the start (they are also in ``data.json``): files skipped as unreadable
    (``data.skip_corrupt``), and a Caltech101 tree without its official classes."""
    notes = []
    skipped = list(info.get("skipped_files") or [])
    count = int(info.get("skipped_corrupt") or len(skipped))
    if count:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        notes.append(
            f"data: skipped {count} unreadable file(s) (data.skip_corrupt=true): {shown}; "
            "the full list is in data.json"
        )
    if info.get("official_classes") is False:
        official = 101 + (1 if info.get("keep_background") else 0)
        notes.append(
            f"data: {dataset} in {info.get('source')} has {info.get('num_classes')} classes, not "
            f"the official {official}: an incomplete copy? (results are not comparable with the "
            "paper's; largebatch download caltech101 fetches the full set)"
        )
    return notes


def progress_bar(enabled: bool, total: int, epoch: int, epochs: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False, file=sys.stderr
    )


def format_row(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  train {row['train_loss']:.4f} "
        f"/ {100 * row['train_acc']:.2f}%  val {row['val_loss']:.4f} / {100 * row['val_acc']:.2f}%"
        f"  {row['examples_per_s']:.0f} ex/s"
    )
