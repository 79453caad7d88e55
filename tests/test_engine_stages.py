"""The engine's stages: loss reads every N updates, divergence bookkeeping, seed streams, the
transform chain's order, the layout rules (small functions, no engine import from analysis)."""

import ast
from pathlib import Path

import pytest
import torch

from largebatch.config import load_config
from largebatch.engine import train
from largebatch.gradient.pipeline import TRANSFORM_ORDER, build_chain
from largebatch.rundir import read_jsonl, read_metrics
from largebatch.seeding import STREAMS, stream_seed

SRC = Path(__file__).resolve().parents[1] / "src" / "largebatch"


def test_steps_jsonl_is_written_every_log_every_steps(tmp_path, tiny_mnist1d_overrides):
    # 480 examples / 64 = 7 updates per epoch, 2 epochs: reads at every 3rd update and at the
    # end of each epoch
    cfg = load_config(None, [*tiny_mnist1d_overrides, "train.log_every_steps=3"])
    train(cfg, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert [r["step"] for r in rows] == [3, 6, 7, 9, 12, 14]
    for r in rows:
        assert r["loss"] > 0 and r["grad_norm"] > 0 and r["examples_per_s"] > 0
        assert r["lr"] == pytest.approx(0.05)
    # the per-read loss averages the updates since the last read; together they are the epoch's
    metrics = read_metrics(tmp_path / "run")
    first = (rows[0]["loss"] * 3 + rows[1]["loss"] * 3 + rows[2]["loss"]) / 7
    assert first == pytest.approx(metrics[0]["running_loss"], rel=1e-9)


def test_divergence_names_the_update_it_happened_at(tmp_path, tiny_mnist1d_overrides):
    over = [*tiny_mnist1d_overrides, "optim.lr=1e6", "train.log_every_steps=5"]
    result = train(load_config(None, over), tmp_path / "run")
    assert result.status == "diverged"
    message = result.summary["message"]
    at = int(message.split("at update ")[1].split()[0])
    noticed = int(message.split("noticed at update ")[1].split(",")[0])
    assert 1 <= at <= noticed <= at + 5  # found at the next read, at most log_every_steps late


def test_seed_streams_are_distinct_across_streams_epochs_and_many_ranks():
    seeds = {
        stream_seed(seed, stream, epoch, rank)
        for seed in (0, 1)
        for stream in STREAMS
        for epoch in range(4)
        for rank in range(130)  # past 64 ranks, where the old arithmetic mix collided
    }
    assert len(seeds) == 2 * len(STREAMS) * 4 * 130
    assert stream_seed(-1, "order") != stream_seed(2**64 - 1 + 2**32, "order")
    assert all(0 <= s < 2**63 for s in seeds)


def test_chain_is_built_in_the_documented_order():
    model = torch.nn.Linear(3, 2)
    cfg = load_config(None, ["optim.grad_clip_norm=1", "noise.alpha=1e-5", "optim.name=lars"])
    order = build_chain(list(model.parameters()), cfg).order
    assert order == [name for name in TRANSFORM_ORDER if name in order]
    assert order[:2] == ["clip", "noise"]


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_engine_function_is_longer_than_80_lines():
    long = [
        (p.name, name, n)
        for p in (SRC / "engine").glob("*.py")
        for name, n in _functions(p)
        if n > 80
    ]
    assert not long, long


def test_analysis_does_not_import_the_engine():
    for path in (SRC / "analysis").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("largebatch.engine"), (path.name, node.module)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("largebatch.engine"), path.name
