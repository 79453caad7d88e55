"""The training engine, one module per stage:

- :mod:`~largebatch.engine.setup`: a run built from a config (data, model, optimizer, chain);
- :mod:`~largebatch.engine.update`: one optimizer update (micro-batches, ``no_sync``, loss
  scaling, the gradient-transform chain, ``optimizer.step()``);
- :mod:`~largebatch.engine.loop`: the epoch loop, loss reads, stop signals, checkpoints;
- :mod:`~largebatch.engine.evaluate`: loss and accuracy over a split;
- :mod:`~largebatch.engine.records`: the run directory's checks and records.
- :mod:`~largebatch.engine.trackers`: copies of the records for TensorBoard, CSV, W&B and
  MLflow (``train.trackers``).

Sampling (the batch plan, epoch order, global batches, rank shards) lives in
:mod:`largebatch.data.sampling`; model assembly in :mod:`largebatch.models.assembly`.
"""

from largebatch.engine.evaluate import evaluate
from largebatch.engine.loop import Diverged, RunResult, train
from largebatch.engine.setup import Run, build_run, resolve_device
from largebatch.engine.update import UpdateParts, UpdateResult, optimizer_update

__all__ = [
    "Diverged",
    "Run",
    "RunResult",
    "UpdateParts",
    "UpdateResult",
    "build_run",
    "evaluate",
    "optimizer_update",
    "resolve_device",
    "train",
]
