"""``largebatch analyze`` end to end on real (tiny) MNIST-1D runs trained by the engine."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from largebatch.analysis.eigen import lanczos
from largebatch.analysis.hvp import HessianOperator, fixed_batches
from largebatch.analysis.runs import load_run
from largebatch.cli import main
from largebatch.config import load_config
from largebatch.engine import train

pytestmark = pytest.mark.slow

BASE = [
    "data.name=mnist1d",
    "data.num_samples=600",
    "train.epochs=1",
    "train.progress=false",
    "optim.lr=0.05",
    "optim.base_batch_size=32",
    "noise.alpha=1e-5",
]
MLP = ["model.name=mlp", "model.hidden=[16,16]"]


def train_run(folder: Path, *overrides: str) -> Path:
    result = train(load_config(None, [*BASE, *overrides]), folder)
    assert result.status == "completed"
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "small": train_run(root / "small", *MLP, "train.global_batch_size=16"),
        "large": train_run(root / "large", *MLP, "train.global_batch_size=128"),
        "other": train_run(root / "other", "model.name=mlp", "model.hidden=[8]"),
        "bn": train_run(
            root / "bn", "model.name=cnn1d", "model.channels=4", "model.batchnorm=true"
        ),
    }


def fingerprint(run: Path) -> dict[str, str]:
    """Hashes of every file of a run outside analysis/."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "analysis" not in p.relative_to(run).parts
    }


def analyze(*argv: str) -> int:
    return main(["analyze", *map(str, argv)])


def read(path: Path) -> dict:
    assert path.with_suffix(".png").is_file(), path.with_suffix(".png")
    with open(path) as f:
        return json.load(f)


def test_every_command_writes_json_and_png_and_touches_nothing_else(runs, capsys):
    small, large = runs["small"], runs["large"]
    before = fingerprint(small), fingerprint(large)
    out = small / "analysis"

    assert (
        analyze(
            "hessian",
            small,
            "--samples",
            128,
            "--top-k",
            2,
            "--trace-probes",
            4,
            "--density",
            "--density-runs",
            2,
            "--density-steps",
            8,
        )
        == 0
    )
    rec = read(out / "hessian.json")
    assert rec["num_samples"] == 128 and rec["bn_mode"] == "eval" and rec["wall_time_s"] > 0
    assert rec["num_matvecs"] == (
        rec["values"]["eigen_matvecs"] + 4 + rec["values"]["density"]["matvecs"]
    )
    assert rec["seeds"]["samples"] == 0 and len(rec["values"]["eigenvalues"]) == 2
    # The same numbers as the library called directly with the same seed.
    run = load_run(small)
    batches, _ = fixed_batches(run.data.train, 128, 512, seed=0)
    op = HessianOperator(run.model, batches)
    direct = lanczos(op.matvec, op.dim, 2, tol=1e-4, generator=torch.Generator().manual_seed(0))
    assert rec["values"]["eigenvalues"] == pytest.approx(direct.eigenvalues.tolist(), rel=1e-6)
    assert "top eigenvalues" in capsys.readouterr().out

    assert analyze("sharpness", small, "--samples", 128, "--max-iter", 3) == 0
    rec = read(out / "sharpness.json")
    assert rec["values"]["sharpness"] >= 0 and rec["values"]["lbfgs_iterations"] <= 3
    assert analyze("sharpness", small, "--samples", 64, "--subspace-dim", 5) == 0
    assert read(out / "sharpness.json")["settings"]["subspace_dim"] == 5

    assert analyze("interpolate", small, large, "--range", "-1:2:4") == 0
    rec = read(out / "interpolate.json")
    assert rec["values"]["alpha"] == [-1.0, 0.0, 1.0, 2.0]
    assert rec["bn_recomputed"] is False and rec["num_samples"] == {"train": 480, "val": 120}
    # a = 0 and a = 1 are the two trained networks: their final validation loss in the run.
    for run_dir, i in ((small, 1), (large, 2)):
        final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert rec["values"]["val_loss"][i] == pytest.approx(final["val_loss"], rel=1e-5)

    assert analyze("surface", small, "--grid", "-1:1:3", "--samples", 64) == 0
    assert len(read(out / "surface_1d.json")["values"]["loss"]) == 3
    assert analyze("surface", small, "--grid", "-0.5:0.5:3", "--dim", 2, "--samples", 64) == 0
    assert len(read(out / "surface_2d.json")["values"]["loss"]) == 3

    assert analyze("noise-scale", small, "--samples", 128) == 0
    rec = read(out / "noise_scale.json")
    values = rec["values"]
    assert values["method"] == "per_example" and values["trace_sigma"] > 0
    assert rec["loss"] == "cross_entropy"
    step = json.loads((small / "summary.json").read_text())["final"]["step"]
    assert values["step"] == step
    assert values["injected_variance_per_entry"] == pytest.approx(1e-5 / (1 + step) ** 0.55)
    assert values["batch_size"] == 16 and values["base_batch_size"] == 32

    assert (fingerprint(small), fingerprint(large)) == before
    assert not (large / "analysis").exists()


def test_batchnorm_run(runs, tmp_path):
    bn = runs["bn"]
    assert analyze("hessian", bn, "--samples", 64, "--top-k", 1, "--bn-mode", "train") == 0
    assert read(bn / "analysis" / "hessian.json")["bn_mode"] == "train"
    assert analyze("surface", bn, "--grid", "-1:1:3", "--samples", 64) == 0
    assert read(bn / "analysis" / "surface_1d.json")["bn_recomputed"] is True
    assert analyze("noise-scale", bn, "--samples", 64) == 0
    assert read(bn / "analysis" / "noise_scale.json")["values"]["method"] == "per_batch"
    copy = tmp_path / "bn_copy"
    shutil.copytree(bn, copy, ignore=shutil.ignore_patterns("analysis"))
    assert analyze("interpolate", bn, copy, "--range", "0:1:2", "--out", tmp_path / "x") == 0
    rec = read(tmp_path / "x" / "interpolate.json")
    assert rec["bn_recomputed"] is True
    assert rec["values"]["val_loss"][0] == rec["values"]["val_loss"][1]


def test_bad_input_exits_2_with_a_message_naming_the_fix(runs, tmp_path, capsys):
    small, other = runs["small"], runs["other"]
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(small / "config.yaml", no_ckpt / "config.yaml")
    assert analyze("hessian", no_ckpt) == 2
    assert "train it first" in capsys.readouterr().err
    assert analyze("interpolate", small, small, "--range", "0:1") == 2
    assert "START:STOP:NUM" in capsys.readouterr().err
    assert analyze("surface", small, "--grid", "x:1:3") == 2
    assert "START:STOP:NUM" in capsys.readouterr().err
    assert analyze("interpolate", small, other) == 2
    assert "same model" in capsys.readouterr().err
    assert analyze("hessian", small, "--top-k", 100000, "--samples", 8) == 2
    assert "1 <= K <=" in capsys.readouterr().err
    assert analyze("sharpness", small, "--epsilon", 0) == 2
    assert not (no_ckpt / "analysis").exists()


def test_noise_scale_of_a_shaped_noise_run_reports_the_recorded_injected_variance(tmp_path):
    # The shaped kinds size their noise from gradients measured in training: the analysis must
    # report what the run injected (metrics.jsonl), not the isotropic closed form (0 here).
    base = [o for o in BASE if not o.startswith("noise.alpha")]
    run_dir = tmp_path / "shaped"
    overrides = [*base, *MLP, "train.global_batch_size=64", "train.micro_batch_size=16"]
    result = train(
        load_config(None, [*overrides, "noise.kind=microbatch", "noise.match=step"]), run_dir
    )
    assert result.status == "completed"
    assert analyze("noise-scale", run_dir, "--samples", 64) == 0
    values = read(run_dir / "analysis" / "noise_scale.json")["values"]
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["noise_variance"] > 0
    assert values["injected_variance_per_entry"] == final["noise_variance"]
    assert values["noise_kind"] == "microbatch"
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "steps.jsonl").unlink()
    assert analyze("noise-scale", run_dir, "--samples", 64) == 2
