"""Attached gradient noise in your own DDP loop (2 gloo ranks, CPU): stop and resume in either
order of ``attach`` and ``optimizer.load_state_dict``, and through ``torch.distributed.checkpoint``
with a process group, against the same loop never stopped.

This file is also the script the ranks run (``python -m torch.distributed.run --nproc-per-node=2
tests/distributed/test_attach_ddp.py OUT``): each rank writes what it ended with to
``OUT/NAME-rank{r}.pt``; the tests compare them.
"""

from __future__ import annotations

import gc
import sys
import warnings
from pathlib import Path

import pytest
import torch

try:
    from .ddp_helpers import HERE, torchrun
except ImportError:  # run as the ranks' script: this folder is on sys.path
    from ddp_helpers import HERE, torchrun

pytestmark = pytest.mark.distributed

GLOBAL_BATCH = 16
STEPS, STOP = 6, 3
ORDERS = ("attach_then_load", "load_then_attach")


def _rank_main(out: Path) -> None:
    """What each rank runs (under torchrun)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    import torch.distributed.checkpoint.state_dict as dsd
    from torch.nn.parallel import DistributedDataParallel as DDP

    from largebatch import GradientNoise

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    def build(seed=0, noise_seed=0):
        torch.manual_seed(seed)  # DDP broadcasts rank 0's weights anyway
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        ddp = DDP(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        # the same seed on every rank: the same noise, added after the all-reduce
        noise = GradientNoise(model.parameters(), alpha=1e-2, gamma=0.55, seed=noise_seed)
        return model, ddp, optimizer, noise

    def train(ddp, optimizer, first, last):
        share = GLOBAL_BATCH // world
        for step in range(first, last):
            g = torch.Generator().manual_seed(1000 + step)
            x, y = (
                torch.randn(GLOBAL_BATCH, 3, generator=g),
                torch.randn(GLOBAL_BATCH, 2, generator=g),
            )
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
            optimizer.zero_grad()
            (ddp(x) - y).pow(2).mean().backward()
            optimizer.step()

    def record(name, model, noise, caught):
        ours = [str(w.message) for w in caught if str(w.message).startswith("attach:")]
        weights = [p.detach().clone() for p in model.parameters()]
        torch.save(
            {"weights": weights, "t": noise.t, "warnings": ours}, out / f"{name}-rank{rank}.pt"
        )

    model, ddp, optimizer, noise = build()
    noise.attach(optimizer)
    train(ddp, optimizer, 0, STEPS)
    record("straight", model, noise, [])

    model, ddp, optimizer, noise = build()
    noise.attach(optimizer)
    train(ddp, optimizer, 0, STOP)
    path = out / "ckpt.pt"
    if rank == 0:  # rank 0 saves; every rank loads
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    dcp.save(
        {
            "model": dsd.get_model_state_dict(ddp),
            "optimizer": dsd.get_optimizer_state_dict(ddp, optimizer),
        },
        checkpoint_id=out / "dcp",
    )
    dist.barrier()

    for order in ORDERS:
        model, ddp, optimizer, noise = build(seed=7, noise_seed=99)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            checkpoint = torch.load(path, weights_only=True)
            model.load_state_dict(checkpoint["model"])
            if order == "attach_then_load":
                noise.attach(optimizer)
                optimizer.load_state_dict(checkpoint["optimizer"])
            else:
                optimizer.load_state_dict(checkpoint["optimizer"])
                noise.attach(optimizer)
            train(ddp, optimizer, STOP, STEPS)
        record(order, model, noise, caught)

    def dcp_load(ddp, optimizer):
        state = {
            "model": dsd.get_model_state_dict(ddp),
            "optimizer": dsd.get_optimizer_state_dict(ddp, optimizer),
        }
        dcp.load(state, checkpoint_id=out / "dcp")
        dsd.set_model_state_dict(ddp, state["model"])
        dsd.set_optimizer_state_dict(ddp, optimizer, state["optimizer"])

    for order in ORDERS:
        model, ddp, optimizer, noise = build(seed=7, noise_seed=99)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if order == "attach_then_load":
                noise.attach(optimizer)
                dcp_load(ddp, optimizer)
            else:  # nothing to claim: one warning, then its fix
                dcp_load(ddp, optimizer)
                noise.attach(optimizer)
                dcp_load(ddp, optimizer)
            train(ddp, optimizer, STOP, STEPS)
        record(f"dcp_{order}", model, noise, caught)
    # Free the DDP wrappers (their reducers hold gloo work) while the process group is alive:
    # freed at interpreter exit instead, after it is destroyed, gloo can abort the process.
    del model, ddp, optimizer, noise
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("attach_ddp")
    proc = torchrun([str(HERE / "test_attach_ddp.py"), str(out)], timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return out


def result(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / f"{name}-rank{rank}.pt", weights_only=True)


def bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_replicas_of_the_straight_run_are_identical(ddp):
    zero, one = (result(ddp, "straight", r) for r in (0, 1))
    assert bitwise(zero["weights"], one["weights"]) and zero["t"] == one["t"] == STEPS


@pytest.mark.parametrize("order", ORDERS)
def test_resume_is_bitwise_in_either_order_on_every_rank(ddp, order):
    straight = result(ddp, "straight", 0)
    for rank in (0, 1):
        resumed = result(ddp, order, rank)
        assert bitwise(resumed["weights"], straight["weights"]), (order, rank)
        assert resumed["t"] == STEPS and resumed["warnings"] == []


@pytest.mark.parametrize("order", ORDERS)
def test_dcp_resume_is_bitwise_or_one_warning_naming_the_fix(ddp, order):
    straight = result(ddp, "straight", 0)
    for rank in (0, 1):
        resumed = result(ddp, f"dcp_{order}", rank)
        assert bitwise(resumed["weights"], straight["weights"]), (order, rank)
        assert resumed["t"] == STEPS
        if order == "attach_then_load":
            assert resumed["warnings"] == []
        else:
            (message,) = resumed["warnings"]
            assert "set_optimizer_state_dict" in message and "\n" not in message


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
