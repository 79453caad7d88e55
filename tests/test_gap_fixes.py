"""The fixes beyond the paper, through the engine: shaped noise kinds, SWA, the micro-batch
gradient-norm penalty."""

import json

import pytest
import torch
import torch.nn.functional as F

from largebatch.analysis.runs import load_run
from largebatch.checkpoint import load_checkpoint
from largebatch.config import load_config
from largebatch.engine import UpdateParts, optimizer_update, train
from largebatch.errors import UserError
from largebatch.gradient.base import TransformChain, UpdateInfo
from largebatch.rundir import read_metrics


def params_of(run_dir, key="model"):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")[key]


def assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_grad_penalty_is_the_written_objective():
    """One update minimises sum_j [L_j / k + lambda / (4k) |grad L_j|^2] over k micro-batches."""
    torch.manual_seed(0)
    model, ref = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(12, 3), torch.randint(0, 4, (12,))
    lam, lr, k = 0.7, 0.1, 3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    parts = UpdateParts(model, opt, TransformChain([]), grad_penalty=lam)
    micro = list(zip(x.chunk(k), y.chunk(k), strict=True))
    optimizer_update(parts, micro, 12, UpdateInfo(0, lr))
    total = 0.0
    for xs, ys in micro:
        loss = F.cross_entropy(ref(xs), ys)
        grads = torch.autograd.grad(loss, list(ref.parameters()), create_graph=True)
        total = total + loss / k + lam / (4 * k) * sum(g.pow(2).sum() for g in grads)
    total.backward()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach() - lr * q.grad, atol=1e-7, rtol=0)
    # and it is not the plain update
    plain = torch.nn.Linear(3, 4)
    plain.load_state_dict(ref.state_dict())
    assert not torch.allclose(model.weight, ref.weight - lr * 0)


def test_swa_reports_the_average_and_resumes_exactly(tmp_path, tiny_mnist1d_overrides):
    over = [*tiny_mnist1d_overrides, "train.epochs=4", "train.swa_start_epoch=2"]
    cfg = load_config(None, over)
    train(cfg, tmp_path / "straight")
    rows = read_metrics(tmp_path / "straight")
    assert [r["swa_averages"] for r in rows] == [0, 1, 2, 3]  # epoch ends 2, 3, 4 (after 14 steps)
    swa = params_of(tmp_path / "straight", "swa_model")
    # the average of the weights at the ends of epochs 2, 3 and 4 differs from the last weights
    assert not torch.equal(
        swa["module.net.1.weight"], params_of(tmp_path / "straight")["net.1.weight"]
    )
    # what the run reports is the averaged model: evaluate it again from the run directory
    loaded = load_run(tmp_path / "straight")
    assert torch.equal(loaded.model.net[1].weight, swa["module.net.1.weight"])
    from largebatch.distributed import DistContext
    from largebatch.engine import evaluate

    _, acc = evaluate(loaded.model, loaded.data.val, 512, DistContext())
    assert acc == pytest.approx(rows[-1]["val_acc"], abs=1e-12)
    train(cfg, tmp_path / "split", stop_after_epochs=3)
    train(cfg, tmp_path / "split", resume=True)
    assert_equal_states(swa, params_of(tmp_path / "split", "swa_model"))


def test_swa_every_n_steps_averages_n_step_snapshots(tmp_path, tiny_mnist1d_overrides):
    over = [*tiny_mnist1d_overrides, "train.swa_start_epoch=1", "train.swa_every_steps=2"]
    train(load_config(None, over), tmp_path / "run")
    # 7 updates per epoch; from update 7 on, every 2nd: 8, 10, 12, 14
    assert read_metrics(tmp_path / "run")[-1]["swa_averages"] == 4


@pytest.mark.parametrize("kind", ["microbatch", "diagonal", "multiplicative"])
def test_shaped_noise_changes_the_run_and_resumes_bit_exactly(
    tmp_path, tiny_mnist1d_overrides, kind
):
    over = [
        *tiny_mnist1d_overrides,
        "train.epochs=3",
        "train.micro_batch_size=16",
        f"noise.kind={kind}",
        "noise.match=step",
        "optim.base_batch_size=16",
        "optim.lr=0.0125",
    ]
    cfg = load_config(None, over)
    train(cfg, tmp_path / "straight")
    plain = load_config(None, [*over, "noise.kind=isotropic", "noise.match=epoch"])
    train(plain, tmp_path / "plain")
    assert not torch.equal(
        params_of(tmp_path / "straight")["net.1.weight"],
        params_of(tmp_path / "plain")["net.1.weight"],
    )
    variances = [r["noise_variance"] for r in read_metrics(tmp_path / "straight")]
    assert all(v > 0 for v in variances)
    train(cfg, tmp_path / "split", stop_after_epochs=1)
    train(cfg, tmp_path / "split", resume=True)
    assert_equal_states(params_of(tmp_path / "straight"), params_of(tmp_path / "split"))


def test_match_epoch_under_linear_scaling_adds_nothing_and_says_so(
    tmp_path, tiny_mnist1d_overrides, capsys
):
    over = [
        *tiny_mnist1d_overrides,
        "train.micro_batch_size=16",
        "optim.base_batch_size=16",
        "optim.lr=0.0125",
    ]
    train(load_config(None, [*over, "noise.kind=microbatch"]), tmp_path / "shaped")
    train(load_config(None, over), tmp_path / "plain")
    assert_equal_states(params_of(tmp_path / "shaped"), params_of(tmp_path / "plain"))
    notes = json.loads((tmp_path / "shaped" / "data.json").read_text())["notes"]
    assert len(notes) == 1 and "c = 0" in notes[0] and "nothing is added" in notes[0]
    assert "nothing is added" in capsys.readouterr().err


def test_micro_batch_kinds_need_two_micro_batches(tmp_path, tiny_mnist1d_overrides):
    over = [
        *tiny_mnist1d_overrides,
        "noise.kind=diagonal",
        "noise.match=step",
        "optim.base_batch_size=16",
    ]
    with pytest.raises(UserError, match="train.micro_batch_size"):
        train(load_config(None, over), tmp_path / "run")
    assert not (tmp_path / "run").exists()
