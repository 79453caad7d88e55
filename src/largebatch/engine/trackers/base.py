"""What every tracker is: three calls, and the helpers they share.

A tracker gets, from global rank 0 alone:

- ``start(run_dir, config, start_step)``: once, before the first update of this process;
  ``config`` is the resolved config as nested dicts (``config_to_dict``), ``start_step`` the
  completed updates the run starts from (0 fresh, the checkpoint's step on ``--resume``);
- ``log(kind, row, step)``: one records line as it is written: ``kind`` ``train`` (a
  ``steps.jsonl`` line), ``epoch`` (``metrics.jsonl``) or ``eval`` (``evals.jsonl``);
  ``step`` is the number of completed optimizer updates, the x-axis of every kind;
- ``finish(failed)``: once, at the end of the process's run (``failed``: it raised).

Example::

    >>> flat_config({"optim": {"lr": 0.05, "milestones": []}, "train": {"threads": None}})
    {'optim.lr': 0.05, 'optim.milestones': '[]', 'train.threads': 'null'}
    >>> scalars({"step": 7, "epoch": 1, "loss": 0.5, "lr": 0.1})
    {'loss': 0.5, 'lr': 0.1}
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from largebatch import rundir

KINDS = {"train": rundir.STEPS, "epoch": rundir.METRICS, "eval": rundir.EVALS}
"""A row's kind and the records file it is a line of."""
AXES = ("step", "epoch")
"""Keys of a record that are its position, not a scalar to plot."""
IDS_FILE = "trackers.json"
"""``RUN/trackers.json``: the run ids of the trackers that have one (W&B, MLflow), so that
``--resume`` continues the same run."""


class Tracker(ABC):
    """One experiment tracker (see the module docstring for when each call comes)."""

    name: str
    package: str | None = None
    """The module that must be importable (None: no dependency)."""
    install = ""
    """The command that installs it, for the error when it is missing."""

    @abstractmethod
    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None: ...

    @abstractmethod
    def log(self, kind: str, row: dict[str, Any], step: int) -> None: ...

    @abstractmethod
    def finish(self, failed: bool) -> None:
        """Close what :meth:`start` opened (``failed``: the run raised)."""


def flat_config(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists and None as their JSON text
    (every tracker takes plain values)."""
    flat: dict[str, bool | int | float | str] = {}
    for section, values in config.items():
        for key, value in values.items():
            plain = isinstance(value, bool | int | float | str)
            flat[f"{section}.{key}"] = value if plain else json.dumps(value)
    return flat


def as_text(value: bool | int | float | str) -> str:
    """A :func:`flat_config` value as text, booleans as in the YAML (``true``, not ``True``)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a records line, without its position (``step``, ``epoch``)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key not in AXES and isinstance(value, int | float) and not isinstance(value, bool)
    }


def run_id(run_dir: Path, tracker: str, start_step: int) -> str | None:
    """The run id ``tracker`` stored in ``run_dir`` when resuming (``start_step > 0``); None on a
    fresh start (a run directory restarted from scratch gets a new tracker run)."""
    path = Path(run_dir) / IDS_FILE
    if start_step == 0 or not path.is_file():
        return None
    value = rundir.read_json(path).get(tracker)
    return str(value) if value else None


def store_run_id(run_dir: Path, tracker: str, value: str) -> None:
    """Remember ``tracker``'s run id in ``RUN/trackers.json`` for :func:`run_id`."""
    path = Path(run_dir) / IDS_FILE
    ids = rundir.read_json(path) if path.is_file() else {}
    ids[tracker] = value
    rundir.write_json(path, ids)
