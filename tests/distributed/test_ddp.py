"""DDP on 2 gloo ranks (CPU): the engine under ``torchrun`` against single-process runs.

One ``torchrun`` launch of ``ddp_worker.py`` does all the 2-rank trainings (each launch costs
seconds of start-up); the single-process references run in this process. Two more launches check
the failures: an impossible batch and a rank that dies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from largebatch.checkpoint import load_checkpoint
from largebatch.config import load_config
from largebatch.data.sampling import epoch_order, global_batches
from largebatch.engine import train
from largebatch.gradient.noise import noise_variance
from largebatch.rundir import read_json, read_metrics

from .ddp_helpers import (
    BATCHNORM,
    HERE,
    NOISY,
    ONE_STEP,
    ONE_STEP_LR,
    TINY,
    UNEVEN,
    child_env,
    free_port,
    torchrun,
)

pytestmark = pytest.mark.distributed

ATOL = 1e-6  # 2 ranks vs 1 process: the same sums in another order


def _output(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    """The 2-rank runs (see ddp_worker.py for what each holds)."""
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun([str(HERE / "ddp_worker.py"), str(out)], timeout=300)
    assert proc.returncode == 0, _output(proc)
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The same trainings in one process (world size 1)."""
    out = tmp_path_factory.mktemp("single")
    runs = {
        "quiet": TINY,
        "quiet_accumulated": [*TINY, "train.micro_batch_size=32"],
        "noisy": NOISY,
        "noisy_accumulated": [*NOISY, "train.micro_batch_size=32"],
        "uneven": [o for o in UNEVEN if not o.startswith("train.micro_batch_size")],
        "uneven_accumulated": UNEVEN,
        "one_step_quiet": ONE_STEP,
        "one_step_noisy": [*ONE_STEP, "noise.alpha=1e-3"],
        "batchnorm": BATCHNORM,
        "ghost_batchnorm": [*BATCHNORM, "model.ghost_batch_size=32"],
    }
    for name, overrides in runs.items():
        assert train(load_config(None, overrides), out / name).status == "completed"
    return out


def rank_params(run_dir: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / f"rank{rank}.pt", weights_only=True)


def checkpoint_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_close_params(a, b, atol: float = ATOL, keys=None) -> None:
    keys = keys or a.keys()
    assert set(keys) <= set(b.keys())
    for k in keys:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize(
    "run", ["quiet", "noisy", "uneven", "one_step_noisy", "batchnorm", "resumed"]
)
def test_replicas_stay_bit_identical(ddp, run):
    zero, one = rank_params(ddp / run, 0), rank_params(ddp / run, 1)
    assert zero.keys() == one.keys()
    for k in zero:
        assert torch.equal(zero[k], one[k]), f"{run}: {k} differs between the ranks"
    # The checkpoint rank 0 wrote is the replicas' common state.
    for k, v in checkpoint_params(ddp / run).items():
        assert torch.equal(v, zero[k]), k


def test_ranks_train_on_disjoint_shards_of_one_shared_order(ddp):
    seen = [torch.load(ddp / "quiet" / f"indices{r}.pt", weights_only=True) for r in range(2)]
    num_train, batch, epochs = 480, 64, 3
    expected = [
        b
        for epoch in range(epochs)
        for b in global_batches(epoch_order(num_train, 0, epoch), batch, True, 2)
    ]
    assert len(seen[0]) == len(seen[1]) == len(expected) == epochs * (num_train // batch)
    for step, global_batch in enumerate(expected):
        zero, one = seen[0][step], seen[1][step]
        assert len(zero) == len(one) == batch // 2
        assert not set(zero.tolist()) & set(one.tolist()), f"update {step}: shards overlap"
        assert torch.equal(torch.cat([zero, one]), global_batch), f"update {step}"


@pytest.mark.parametrize("run", ["quiet", "noisy", "uneven"])
def test_two_ranks_equal_one_process_and_accumulation(ddp, single, run):
    """2 ranks x B/2 == 1 process x B == 1 process x accumulated micro-batches. ``uneven`` ends
    each epoch with a partial batch of 33: unequal rank slices, unequal micro-batch counts."""
    two_ranks = rank_params(ddp / run, 0)
    assert_close_params(two_ranks, checkpoint_params(single / run))
    assert_close_params(two_ranks, checkpoint_params(single / f"{run}_accumulated"))


def test_metrics_are_reduced_over_ranks_and_written_once(ddp, single):
    two, one = read_metrics(ddp / "noisy"), read_metrics(single / "noisy")
    assert [r["epoch"] for r in two] == [1, 2, 3]  # one writer: no duplicated rows
    for a, b in zip(two, one, strict=True):
        assert a["step"] == b["step"] and a["lr"] == b["lr"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "running_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    data = read_json(ddp / "noisy" / "data.json")
    assert data["batch_plan"] == {
        "global_batch_size": 64,
        "per_device_batch_size": 32,
        "micro_batch_size": 32,
        "accumulation_steps": 1,
        "world_size": 2,
    }
    assert data["scaled_lr"] == 0.05  # the LR follows the global batch, not the per-device one
    assert read_json(ddp / "noisy" / "env.json")["world_size"] == 2


def test_injected_noise_variance_is_the_configured_one(ddp, single):
    alpha = 1e-3
    # One plain-SGD update: noisy - quiet = -lr * sigma_0 * n, n ~ N(0, I).
    quiet, noisy = rank_params(ddp / "one_step_quiet", 0), rank_params(ddp / "one_step_noisy", 0)
    n = torch.cat([(noisy[k] - quiet[k]).flatten() for k in quiet]) / -ONE_STEP_LR
    assert n.numel() > 2000
    assert n.std().item() == pytest.approx(alpha**0.5, rel=0.06)  # not alpha / 2, not 2 alpha
    assert n.mean().item() == pytest.approx(0.0, abs=4 * alpha**0.5 / n.numel() ** 0.5)
    # And it is exactly the noise a single process draws from the same seed.
    q1, n1 = (checkpoint_params(single / f"one_step_{s}") for s in ("quiet", "noisy"))
    single_noise = torch.cat([(n1[k] - q1[k]).flatten() for k in q1]) / -ONE_STEP_LR
    torch.testing.assert_close(n, single_noise, atol=1e-4, rtol=0)

    # Over a longer run: the recorded variance follows alpha / (1 + t)^gamma with t = updates
    # done, and the transform's counter is the number of updates (once per update, not per rank).
    for row in read_metrics(ddp / "noisy"):
        assert row["noise_variance"] == pytest.approx(noise_variance(alpha, 0.55, row["step"] - 1))
    ckpt = load_checkpoint(ddp / "noisy" / "checkpoints" / "last.pt")
    assert ckpt["transforms"]["noise"]["t"] == ckpt["step"] == 21


def test_resume_with_the_same_and_a_different_world_size(ddp, tmp_path):
    straight = rank_params(ddp / "noisy", 0)
    # Same world size: stopped after epoch 1, resumed, ends bit-identical.
    resumed = rank_params(ddp / "resumed", 0)
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    assert [r["epoch"] for r in read_metrics(ddp / "resumed")] == [1, 2, 3]
    # The 2-rank checkpoint of epoch 1, continued by a single process.
    stopped = ddp / "stopped_copy"
    assert load_checkpoint(stopped / "checkpoints" / "last.pt")["world_size"] == 2
    result = train(load_config(None, NOISY), stopped, resume=True)
    assert result.status == "completed" and result.summary["step"] == 21
    assert_close_params(checkpoint_params(stopped), straight)


def test_per_replica_batchnorm_is_ghost_batchnorm_of_the_per_device_batch(ddp, single):
    two_ranks = rank_params(ddp / "batchnorm", 0)
    weights = [k for k, v in two_ranks.items() if v.is_floating_point() and "running" not in k]
    assert_close_params(two_ranks, checkpoint_params(single / "ghost_batchnorm"), keys=weights)
    # ... and not full-batch BatchNorm (the comparison above can tell them apart).
    full = checkpoint_params(single / "batchnorm")
    assert max((two_ranks[k] - full[k]).abs().max().item() for k in weights) > 1e-3


def test_a_divergence_ends_the_run_on_every_rank_with_the_same_summary(ddp):
    results = [read_json(ddp / f"diverged{rank}.json") for rank in range(2)]
    assert results[0] == results[1]
    assert results[0]["status"] == "diverged"
    assert "lower optim.lr" in results[0]["summary"]["message"]
    assert read_json(ddp / "diverged" / "summary.json")["status"] == "diverged"


def test_sync_batchnorm_on_cpu_is_a_clear_error_on_every_rank(ddp):
    for rank in range(2):
        message = (ddp / f"syncbn_error{rank}.txt").read_text()
        assert "model.sync_batchnorm=false" in message and "CUDA" in message
    assert not (ddp / "syncbn_cpu" / "metrics.jsonl").exists()


def test_impossible_batch_exits_2_on_every_rank(tmp_path):
    """What torchrun starts, minus the agent: one CLI process per rank, told its place by the
    environment. Both ranks must exit 2 with the fix in the message, and not wait for each other."""
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  name: mnist1d\n  num_samples: 600\n")
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **child_env(),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        cmd = [sys.executable, "-m", "largebatch", "train", str(config)]
        cmd += ["train.global_batch_size=63", "train.progress=false", "--out", str(tmp_path / "r")]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen(cmd, env=env, **pipes))
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 2, err
        assert "train.global_batch_size=63" in err and "multiple of 2" in err, err
    assert not (tmp_path / "r").exists()


def test_a_failing_rank_stops_the_job_and_shows_its_error(tmp_path):
    started = time.monotonic()
    proc = torchrun([str(HERE / "fail_worker.py"), str(tmp_path)], timeout=150)
    assert time.monotonic() - started < 150
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, _output(proc)
    assert "injected failure on rank 1 after epoch 1" in output, _output(proc)
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] != "completed" and summary["epochs_completed"] == 1


def test_torchrun_cli_end_to_end(tmp_path):
    """``torchrun -m largebatch train CONFIG``, as the docs show it."""
    config = tmp_path / "tiny.yaml"
    config.write_text("data:\n  name: mnist1d\n  num_samples: 600\n")
    args = ["-m", "largebatch", "train", str(config), *TINY, "--out", str(tmp_path / "run")]
    proc = torchrun(args)
    assert proc.returncode == 0, _output(proc)
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "completed"
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert "completed: 3 epochs" in proc.stdout
