"""Run under ``torchrun --nproc-per-node=2``: several short trainings in one launch.

    python -m torch.distributed.run --nproc-per-node=2 tests/distributed/ddp_worker.py OUT

Each training goes through :func:`largebatch.engine.train`, exactly as ``largebatch train`` does;
this script only watches it. It records, for each run ``NAME``, every rank's final parameters in
``OUT/NAME/rank{r}.pt`` (the checkpoint holds rank 0's alone), and for the first run the example
indices each rank trained on, per update (``OUT/quiet/indices{r}.pt``); each rank's result of a
diverging run (``OUT/diverged{r}.json``) and the error a CPU SyncBatchNorm run raises
(``OUT/syncbn_error{r}.txt``). The test (``test_ddp.py``) compares them with single-process runs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from ddp_helpers import BATCHNORM, NOISY, ONE_STEP, TINY, UNEVEN

import largebatch.engine as engine
import largebatch.engine.loop as loop
import largebatch.engine.setup as setup
from largebatch.config import load_config
from largebatch.errors import UserError

_built: list[torch.nn.Module] = []
_seen: list[torch.Tensor] | None = None
_assemble_model = setup.assemble_model
_local_slice = loop.local_slice


def _recording_assemble_model(*args, **kwargs):
    model = _assemble_model(*args, **kwargs)
    _built.append(model)
    return model


def _recording_local_slice(batch, rank, world_size):
    shard = _local_slice(batch, rank, world_size)
    if _seen is not None:
        _seen.append(shard.clone())
    return shard


setup.assemble_model = _recording_assemble_model
loop.local_slice = _recording_local_slice


def run(out: Path, name: str, overrides: list[str], **kwargs) -> engine.RunResult:
    result = engine.train(load_config(None, overrides), out / name, **kwargs)
    # The model the engine built (DDP wraps it; it is the module the checkpoint saves).
    torch.save(_built[-1].state_dict(), out / name / f"rank{dist.get_rank()}.pt")
    return result


def main() -> None:
    global _seen
    out = Path(sys.argv[1])

    _seen = []
    run(out, "quiet", TINY)
    rank = dist.get_rank()
    torch.save(_seen, out / "quiet" / f"indices{rank}.pt")
    _seen = None

    run(out, "noisy", NOISY)
    run(out, "uneven", UNEVEN)
    run(out, "one_step_quiet", ONE_STEP)
    run(out, "one_step_noisy", [*ONE_STEP, "noise.alpha=1e-3"])
    run(out, "batchnorm", BATCHNORM)

    # Preempted after one epoch; a copy of that state is resumed at world size 1 by the test.
    stopped = run(out, "resumed", NOISY, stop_after_epochs=1)
    assert stopped.status == "stopped", stopped
    if rank == 0:
        shutil.copytree(out / "resumed", out / "stopped_copy")
    dist.barrier()
    run(out, "resumed", NOISY, resume=True)

    # A divergence is seen on every rank at the same update; each rank returns the run's summary.
    diverged = engine.train(load_config(None, [*TINY, "optim.lr=1e6"]), out / "diverged")
    result = {"status": diverged.status, "summary": diverged.summary}
    (out / f"diverged{rank}.json").write_text(json.dumps(result))

    # SyncBatchNorm cannot run on CPU tensors: a clear error on every rank, before training.
    try:
        engine.train(
            load_config(None, [*BATCHNORM, "model.sync_batchnorm=true"]), out / "syncbn_cpu"
        )
    except UserError as e:
        (out / f"syncbn_error{rank}.txt").write_text(str(e))
    dist.barrier()


if __name__ == "__main__":
    main()
