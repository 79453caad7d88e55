"""TensorBoard event files in ``RUN/tensorboard/`` (``train.trackers: [tensorboard]``, or the
alias ``train.tensorboard = true``), through ``torch.utils.tensorboard.SummaryWriter``:

- the resolved config as hyperparameters (the HPARAMS tab, one session: this run directory,
  no extra run folder), with the ``epoch/val_acc``, ``epoch/val_loss``, ``epoch/train_acc`` and
  ``epoch/train_loss`` curves as its metrics;
- every loss read (``train.log_every_steps``): each number of the ``steps.jsonl`` line as
  ``train/<key>`` (``loss``, ``lr``, ``grad_norm``, ``noise_variance``, ``examples_per_s``);
- every epoch: each number of the ``metrics.jsonl`` line as ``epoch/<key>`` (``val_acc``,
  ``train_loss``, ``gap``, ...);
- every step-level evaluation (``train.eval_every_steps``): the ``evals.jsonl`` line as
  ``eval/<key>`` (``val_loss``, ``val_acc``).

The x-axis is always the number of completed optimizer updates (``step``), so the kinds line up.
On ``--resume`` the writer purges the events past the checkpoint's step (a run killed without a
final checkpoint may have logged reads after it), so a resumed run's curves are the
uninterrupted run's. Needs the ``tensorboard`` package (the ``largebatch[tensorboard]`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from largebatch.engine.trackers.base import Tracker, as_text, flat_config, scalars

DIRNAME = "tensorboard"
METRICS = ("epoch/val_acc", "epoch/val_loss", "epoch/train_acc", "epoch/train_loss")
"""The scalars the HPARAMS tab shows beside each run's hyperparameters."""


class TensorBoardTracker(Tracker):
    name = "tensorboard"
    package = "tensorboard"
    install = "pip install tensorboard (or pip install 'largebatch[tensorboard]')"

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # events past the checkpoint (step > start_step) were logged by a session that then stopped
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(str(Path(run_dir) / DIRNAME), purge_step=purge)
        # add_hparams would write them into a new sub-run; the summaries go into this run instead
        flat = flat_config(config)
        params = {k: as_text(v) if isinstance(v, bool) else v for k, v in flat.items()}
        for summary in hparams(params, dict.fromkeys(METRICS, 0.0)):
            self.writer.file_writer.add_summary(summary)  # as add_hparams does

    def log(self, kind: str, row: dict[str, Any], step: int) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)
        if kind == "epoch":
            self.writer.flush()

    def finish(self, failed: bool) -> None:
        self.writer.close()
