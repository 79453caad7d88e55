"""A Weights & Biases run (``train.trackers: [wandb]``; the ``largebatch[wandb]`` extra).

Offline unless the user set ``WANDB_MODE``: nothing leaves the machine, the run is written to
``RUN/wandb/offline-run-<time>-<id>/`` and ``wandb sync RUN/wandb/offline-run-*`` uploads it
later (``WANDB_MODE=online`` logs live, after ``wandb login``). The project is
``WANDB_PROJECT``, else ``largebatch``; the run's name is the run directory's.

- config: the resolved config, flattened (``optim.lr``, ``model.hidden``, ...);
- history, at W&B step = completed optimizer updates: ``train/<key>`` (``steps.jsonl``),
  ``epoch/<key>`` (``metrics.jsonl``) and ``eval/<key>`` (``evals.jsonl``).

``--resume`` continues the same run id (kept in ``RUN/trackers.json``; an offline resume is a
second ``offline-run-*`` folder of that id, and ``wandb sync`` appends it). W&B cannot drop
points: after a kill without a final checkpoint the steps between the checkpoint and the kill are
logged twice (online, W&B keeps the first and warns about the repeat).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from largebatch.engine.trackers.base import Tracker, flat_config, run_id, scalars, store_run_id

DIRNAME = "wandb"
PROJECT = "largebatch"


class WandbTracker(Tracker):
    name = "wandb"
    package = "wandb"
    install = "pip install wandb (or pip install 'largebatch[wandb]')"

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        import wandb

        previous = run_id(run_dir, self.name, start_step)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=Path(run_dir).name,
            id=previous,
            resume="allow" if previous else None,
            dir=str(run_dir),  # W&B adds the wandb/ folder
            config=flat_config(config),
            allow_val_change=True,  # train.epochs may change on --resume
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            settings=wandb.Settings(silent=True, console="off"),
        )
        store_run_id(run_dir, self.name, self.run.id)

    def log(self, kind: str, row: dict[str, Any], step: int) -> None:
        self.run.log({f"{kind}/{k}": v for k, v in scalars(row).items()}, step=step)

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
