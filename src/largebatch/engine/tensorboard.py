"""TensorBoard event files beside the JSON-lines records (``train.tensorboard = true``).

The records stay the source of truth; TensorBoard gets a copy of the same numbers, written by
global rank 0 alone into ``RUN/tensorboard/`` through ``torch.utils.tensorboard.SummaryWriter``:

- every loss read (``train.log_every_steps``): each number of the ``steps.jsonl`` line as
  ``train/<key>`` (``loss``, ``lr``, ``grad_norm``, ``noise_variance``, ``examples_per_s``);
- every epoch: each number of the ``metrics.jsonl`` line as ``epoch/<key>`` (``val_acc``,
  ``train_loss``, ``gap``, ...).

The x-axis is always the number of completed optimizer updates (``step``), so the two kinds line
up. On ``--resume`` the writer purges the events past the checkpoint's step (a run killed
without a final checkpoint may have logged reads after it), so a resumed run's curves are the
uninterrupted run's.

The writers are kept per run directory for the span of :func:`session`, so the loop's record
functions, which know the run directory, reach the writer without it being threaded through
every call. ``tensorboard`` is an optional dependency (the ``largebatch[tensorboard]`` extra);
:func:`require` turns its absence into a :class:`~largebatch.errors.UserError` before anything
runs.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> run_dir = Path(tempfile.mkdtemp())
    >>> with session(run_dir, enabled=False, start_step=0):  # train.tensorboard = false
    ...     log(run_dir, "train", {"step": 10, "loss": 0.5}, step=10)
    False
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from largebatch.errors import UserError

DIRNAME = "tensorboard"
_AXES = ("step", "epoch")
"""Keys of a record that are its position, not a scalar to plot."""

_writers: dict[Path, Any] = {}


def require(enabled: bool) -> None:
    """Raise a :class:`UserError` naming the fix when TensorBoard is asked for but not installed."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "train.tensorboard=true needs the tensorboard package, which is not installed: "
            "pip install tensorboard (or pip install 'largebatch[tensorboard]'), or set "
            "train.tensorboard=false"
        )


@contextmanager
def session(run_dir: Path, enabled: bool, start_step: int) -> Iterator[None]:
    """Open ``run_dir/tensorboard/`` for :func:`log` while the block runs (if ``enabled``: pass
    ``train.tensorboard`` and rank 0). ``start_step``: the completed updates the run starts from;
    events an earlier session logged after that step are purged."""
    if not enabled:
        yield
        return
    require(True)
    from torch.utils.tensorboard import SummaryWriter

    key = Path(run_dir).resolve()
    # events past the checkpoint (step > start_step) were logged by a session that then stopped
    writer = SummaryWriter(str(key / DIRNAME), purge_step=start_step + 1 if start_step else None)
    _writers[key] = writer
    try:
        yield
    finally:
        _writers.pop(key, None)
        writer.close()


def log(run_dir: Path, group: str, row: dict[str, Any], step: int, flush: bool = False) -> bool:
    """Write each number of ``row`` (a records line) as ``<group>/<key>`` at ``step``; returns
    whether a writer was open for ``run_dir`` (False: TensorBoard is off, or not rank 0)."""
    writer = _writers.get(Path(run_dir).resolve())
    if writer is None:
        return False
    for key, value in row.items():
        if key not in _AXES and isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(f"{group}/{key}", float(value), global_step=step)
    if flush:
        writer.flush()
    return True
