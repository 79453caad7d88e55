"""Experiment trackers: copies of a run's records for TensorBoard, CSV, W&B or MLflow.

``train.trackers`` names them (``train.tensorboard = true`` is an alias that adds
``tensorboard``). The JSON-lines records stay the source of truth; global rank 0 alone hands each
tracker the resolved config as hyperparameters (flattened ``section.key`` names) and every line
of ``steps.jsonl`` (kind ``train``), ``metrics.jsonl`` (``epoch``) and ``evals.jsonl``
(``eval``), at x = the number of completed optimizer updates:

- ``tensorboard``: event files in ``RUN/tensorboard/`` (:mod:`.tensorboard`);
- ``csv``: ``RUN/csv/steps.csv``, ``metrics.csv``, ``evals.csv``, ``hparams.csv`` (:mod:`.csv`);
- ``wandb``: a W&B run, offline in ``RUN/wandb/`` unless ``WANDB_MODE`` is set (:mod:`.wandb`);
- ``mlflow``: an MLflow run in the file store ``RUN/mlruns/`` unless ``MLFLOW_TRACKING_URI`` is
  set (:mod:`.mlflow`).

On ``--resume`` each continues what the run directory already holds (the same W&B and MLflow run,
ids in ``RUN/trackers.json``); TensorBoard and CSV drop what was logged past the checkpoint, so
their files are those of a run never stopped.

The open trackers are kept per run directory for the span of :func:`session`, so the loop's
record functions, which know the run directory, reach them without them being threaded through
every call. A missing package is a :class:`~largebatch.errors.UserError` from :func:`require`,
before anything runs.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from largebatch.config import Config, config_to_dict
    >>> run_dir = Path(tempfile.mkdtemp())
    >>> with session(run_dir, ["csv"], config_to_dict(Config()), start_step=0):
    ...     log(run_dir, "train", {"step": 10, "epoch": 1, "loss": 0.5}, step=10)
    True
    >>> print((run_dir / "csv" / "steps.csv").read_text().strip())
    step,epoch,loss
    10,1,0.5
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from largebatch.config import TrainConfig
from largebatch.engine.trackers import csv, mlflow, tensorboard, wandb
from largebatch.engine.trackers.base import Tracker
from largebatch.errors import UserError

TRACKERS: dict[str, type[Tracker]] = {
    "tensorboard": tensorboard.TensorBoardTracker,
    "csv": csv.CsvTracker,
    "wandb": wandb.WandbTracker,
    "mlflow": mlflow.MlflowTracker,
}
"""Every tracker by its ``train.trackers`` name (:data:`largebatch.config.TRACKERS`)."""

_open: dict[Path, list[Tracker]] = {}


def selected(train: TrainConfig) -> list[str]:
    """The trackers a run uses: ``train.trackers``, plus ``tensorboard`` under the alias
    ``train.tensorboard = true``."""
    names = list(train.trackers)
    if train.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def require(names: list[str]) -> None:
    """Raise a :class:`UserError` naming the fix for an unknown tracker or one whose package is
    not installed."""
    for name in names:
        tracker = TRACKERS.get(name)
        if tracker is None:
            raise UserError(
                f"train.trackers: '{name}' is not one of: {', '.join(TRACKERS)}; fix the name"
            )
        if tracker.package and importlib.util.find_spec(tracker.package) is None:
            alias = " (and train.tensorboard=false)" if name == "tensorboard" else ""
            raise UserError(
                f"the {name} tracker needs the {tracker.package} package, which is not "
                f"installed: {tracker.install}; or drop {name} from train.trackers{alias}"
            )


@contextmanager
def session(
    run_dir: Path, names: list[str], config: dict[str, Any], start_step: int
) -> Iterator[list[Tracker]]:
    """Start the trackers ``names`` (pass none off rank 0) on ``run_dir`` for :func:`log` while
    the block runs; ``config``: the resolved config as nested dicts; ``start_step``: the completed
    updates the run starts from. Each started tracker is finished, failed if the block raised."""
    if not names:
        yield []
        return
    require(names)
    key = Path(run_dir).resolve()
    opened: list[Tracker] = []
    with ExitStack() as stack:
        for name in names:
            tracker = TRACKERS[name]()
            try:
                tracker.start(key, config, start_step)
            except Exception as e:  # a W&B login, an unreachable MLflow server, ...
                raise UserError(
                    f"the {name} tracker could not start ({type(e).__name__}: {e}); fix that or "
                    f"drop {name} from train.trackers, then run again with --resume"
                ) from e
            opened.append(tracker)
            stack.push(_finisher(tracker))
        _open[key] = opened
        try:
            yield opened
        finally:
            _open.pop(key, None)


def _finisher(tracker: Tracker) -> Any:
    def finish(exc_type: Any, exc: Any, tb: Any) -> bool:
        tracker.finish(failed=exc_type is not None)
        return False

    return finish


def log(run_dir: Path, kind: str, row: dict[str, Any], step: int) -> bool:
    """Hand one records line (``kind``: ``train``, ``epoch`` or ``eval``) to every tracker open
    on ``run_dir``; returns whether any was (False: none asked for, or not rank 0)."""
    opened = _open.get(Path(run_dir).resolve())
    if not opened:
        return False
    for tracker in opened:
        tracker.log(kind, row, step)
    return True
