"""The sharpness-aware kinds under DDP on 2 gloo ranks (CPU) against single-process runs.

This file is also the script the ranks run (``python -m torch.distributed.run
--nproc-per-node=2 tests/distributed/test_sam_ddp.py OUT``): one launch trains every 2-rank run
through :func:`largebatch.engine.train` and saves each rank's final parameters in
``OUT/NAME/rank{r}.pt``; the test trains the single-process equivalents here and compares.

- ``optim.sam=sam`` on 2 ranks of ``m`` examples perturbs each rank by its own gradient: it is
  m-SAM over micro-batches of ``m`` (``optim.sam=msam``, ``train.micro_batch_size=m``) in one
  process, and not SAM over the whole batch.
- The finite-difference penalty on 2 ranks is its single-process run with micro-batches of the
  per-device batch.
- Momentum-SAM on 2 ranks is Momentum-SAM in one process (the momentum is the same everywhere).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    from .ddp_helpers import HERE, TINY, torchrun
except ImportError:  # run as the ranks' script: this folder is on sys.path
    from ddp_helpers import HERE, TINY, torchrun

pytestmark = pytest.mark.distributed

ATOL = 1e-6  # 2 ranks vs 1 process: the same sums in another order
BASE = [*TINY, "train.epochs=2"]  # MLP without BatchNorm, global batch 64: 32 per rank
PENALTY = ["optim.grad_penalty=0.1", "optim.grad_penalty_form=finite_difference"]
# name: (the 2-rank run, its single-process equivalent)
RUNS = {
    "msam": (
        [*BASE, "optim.sam=sam", "optim.sam_rho=0.1"],
        [*BASE, "optim.sam=msam", "optim.sam_rho=0.1", "train.micro_batch_size=32"],
    ),
    "finite_difference": ([*BASE, *PENALTY], [*BASE, *PENALTY, "train.micro_batch_size=32"]),
    "momentum": ([*BASE, "optim.sam=momentum"], [*BASE, "optim.sam=momentum"]),
}
# Single-process runs the 2-rank ones must NOT equal (the comparisons can tell them apart).
DIFFERENT = {
    "msam": [*BASE, "optim.sam=sam", "optim.sam_rho=0.1"],  # one perturbation for all 64
    "finite_difference": [*BASE, *PENALTY],  # one micro-batch of 64
    "momentum": BASE,  # plain SGD
}


def _rank_main(out: Path) -> None:
    """What each rank runs (under torchrun)."""
    import torch.distributed as dist

    import largebatch.engine as engine
    import largebatch.engine.setup as setup
    from largebatch.config import load_config

    built: list[torch.nn.Module] = []
    assemble = setup.assemble_model

    def recording_assemble_model(*args, **kwargs):
        model = assemble(*args, **kwargs)
        built.append(model)
        return model

    setup.assemble_model = recording_assemble_model
    for name, (overrides, _) in RUNS.items():
        result = engine.train(load_config(None, overrides), out / name)
        assert result.status == "completed", result
        torch.save(built[-1].state_dict(), out / name / f"rank{dist.get_rank()}.pt")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sam_ddp")
    proc = torchrun([str(HERE / "test_sam_ddp.py"), str(out)], timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return out


def _train_single(overrides: list[str], run: Path) -> dict[str, torch.Tensor]:
    from largebatch.checkpoint import load_checkpoint
    from largebatch.config import load_config
    from largebatch.engine import train

    assert train(load_config(None, overrides), run).status == "completed"
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_equal_the_single_process_equivalent(ddp, tmp_path, name):
    zero, one = (torch.load(ddp / name / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in zero:
        assert torch.equal(zero[k], one[k]), f"{name}: {k} differs between the ranks"
    single = _train_single(RUNS[name][1], tmp_path / "single")
    for k in zero:
        torch.testing.assert_close(zero[k], single[k], atol=ATOL, rtol=0, msg=f"{name}: {k}")
    other = _train_single(DIFFERENT[name], tmp_path / "other")
    assert max((zero[k] - other[k]).abs().max().item() for k in zero) > 1e-4


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
