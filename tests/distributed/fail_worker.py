"""Run under ``torchrun --nproc-per-node=2``: a training in which rank 1 alone fails.

    python -m torch.distributed.run --nproc-per-node=2 tests/distributed/fail_worker.py OUT

Rank 1 raises at the start of epoch 2's evaluation, while rank 0 goes on into the collectives
that rank 1 will never join. The job must stop (torchrun ends the other ranks when one fails) and
show rank 1's error, instead of rank 0 waiting for its peer until the process group's timeout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from ddp_helpers import TINY
from torch.distributed.elastic.multiprocessing.errors import record

import largebatch.engine as engine
import largebatch.engine.loop as loop
from largebatch.config import load_config

MESSAGE = "injected failure on rank 1 after epoch 1"
_evaluate = loop.evaluate
_calls = 0


def _failing_evaluate(*args, **kwargs):
    global _calls
    _calls += 1
    # Epoch 1 evaluates the train and validation splits (calls 1 and 2); fail at epoch 2's first.
    if _calls == 3 and dist.get_rank() == 1:
        raise RuntimeError(MESSAGE)
    return _evaluate(*args, **kwargs)


@record
def main() -> None:
    loop.evaluate = _failing_evaluate
    engine.train(load_config(None, TINY), Path(sys.argv[1]) / "run")


if __name__ == "__main__":
    main()
