"""``largebatch sweep``: spec checks, and real tiny sweeps (MNIST-1D MLP, 600 examples, 2 epochs).

Each run is a child ``python -m largebatch train`` process (a few seconds each): the sweep is
checked as a user runs it, killed runs and diverged runs included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from largebatch.cli import main
from largebatch.experiments.sweep import load_spec, run_sweep

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "mnist1d_mlp.yaml"
TINY = {"train.epochs": 2, "data.num_samples": 600, "train.progress": False}


def write_spec(folder: Path, **spec) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"base": str(BASE), "overrides": TINY} | spec))
    return path


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"grid": {"train.global_batch_size": [32]}, "sedes": 2}, ["unknown key 'sedes'"]),
        ({"grid": {}}, ["'grid' is empty"]),
        ({"grid": {"train.global_batch_size": []}}, ["train.global_batch_size", "non-empty"]),
        ({"seeds": [0, "one"]}, ["'seeds'", "integers"]),
        ({"grid": {"train.batch": [32]}}, ["train.batch"]),
        ({"quick": {"epochs": 1}}, ["quick.epochs"]),
        ({"analyze": ["interpolate"]}, ["interpolate"]),
        (
            {"grid": {"train.global_batch_size": [32, 64]}, "interpolate": ["B=32", "B=64"]},
            ["interpolate", "'B=32'", "global_batch_size=32"],
        ),
        ({"interpolate": "B=32"}, ["'interpolate' must be two setting labels"]),
    ],
)
def test_bad_spec_exits_2_naming_the_key(tmp_path, capsys, spec, words):
    path = write_spec(tmp_path, **spec)
    assert main(["sweep", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]
    assert all(w in err[0] for w in words), err[0]
    assert not (tmp_path / "s").exists()  # nothing ran


def test_missing_base_config_is_an_error(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text("base: nowhere.yaml\nseeds: 1\n")
    assert main(["sweep", str(tmp_path / "spec.yaml")]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err


def test_names_come_from_the_overrides_and_quick_form(tmp_path):
    path = write_spec(
        tmp_path,
        grid={"train.global_batch_size": [32, 64]},
        runs=[{"label": "plain"}, {"label": "noisy", "noise.alpha": 1e-5}],
        seeds=3,
        quick={"seeds": 1, "overrides": {"train.epochs": 1}},
    )
    spec = load_spec(path)
    assert len(spec.runs) == 12
    assert spec.runs[0].name == "global_batch_size=32,seed=0"
    assert spec.runs[3].name == "global_batch_size=32,alpha=1e-05,seed=0"
    assert spec.runs[3].label == "global_batch_size=32, noisy"
    quick = load_spec(path, quick=True)
    assert [r.seed for r in quick.runs] == [0] * 4
    assert "train.epochs=1" in quick.runs[0].overrides


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 settings x 2 seeds; one run killed after its first epoch before the sweep starts."""
    folder = tmp_path_factory.mktemp("sweep")
    path = write_spec(folder, grid={"train.global_batch_size": [64, 128]}, seeds=2)
    spec = load_spec(path)
    out = folder / "out"
    killed = spec.runs[1]
    kdir = out / "runs" / killed.name
    cmd = [sys.executable, "-m", "largebatch", "train", str(BASE), *killed.overrides]
    subprocess.run([*cmd, "--out", str(kdir), "--stop-after", "1"], check=True, capture_output=True)
    # What a SIGKILL after epoch 1 leaves: a checkpoint, one metrics row, status "running".
    summary = json.loads((kdir / "summary.json").read_text())
    (kdir / "summary.json").write_text(json.dumps(summary | {"status": "running"}))
    _, manifest = run_sweep(spec, out, workers=2, quiet=True)
    return spec, out, manifest, killed


def test_sweep_completes_and_resumes_the_killed_run(sweep):
    spec, out, manifest, killed = sweep
    assert [r["status"] for r in manifest["runs"]] == ["completed"] * 4
    record = next(r for r in manifest["runs"] if r["name"] == killed.name)
    assert record["action"] == "resume"
    rows = [json.loads(line) for line in (out / "runs" / killed.name / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1, 2]
    stored = json.loads((out / "sweep.json").read_text())
    assert stored["threads_per_run"] >= 1 and len(stored["runs"]) == 4


def test_rerun_skips_finished_runs_and_leaves_their_files(sweep, capsys):
    spec, out, _, _ = sweep
    before = files_of(out / "runs")
    assert main(["sweep", str(spec.path), "--out", str(out)]) == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out
    assert files_of(out / "runs") == before


def test_report_numbers_equal_those_from_the_run_dirs(sweep, tmp_path):
    import statistics

    _, out, _, _ = sweep
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [64, 128]
    for row in rows:
        runs = sorted((out / "runs").glob(f"global_batch_size={row['batch']},seed=*"))
        last = [json.loads((r / "metrics.jsonl").read_text().splitlines()[-1]) for r in runs]
        val = [100 * m["val_acc"] for m in last]
        gap = [100 * m["gap"] for m in last]
        assert row["final_val_acc"]["n"] == 2 and row["seeds"] == [0, 1]
        assert row["final_val_acc"]["mean"] == pytest.approx(statistics.fmean(val))
        assert row["final_val_acc"]["std"] == pytest.approx(statistics.stdev(val))
        assert row["gap"]["std"] == pytest.approx(statistics.stdev(gap))
        assert row["updates"]["mean"] == last[0]["step"]
    table = (tmp_path / "rep" / "table.md").read_text()
    assert (
        f"{rows[0]['final_val_acc']['mean']:.2f} ± {rows[0]['final_val_acc']['std']:.2f}" in table
    )
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "seeds 0, 1" in report and "git commit" in report
    for png in ("curves.png", "batch.png", "steps_to_target.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 10_000


def test_a_diverged_run_is_recorded_and_the_others_go_on(tmp_path, capsys):
    path = write_spec(tmp_path, runs=[{"optim.lr": 1e6}, {"optim.lr": 0.05}], seeds=1)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 1
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["diverged", "completed"]
    assert "lr=1e+06" in capsys.readouterr().err
    # Run again: the diverged run is not retrained (it would diverge again), still reported.
    before = files_of(out / "runs")
    assert main(["sweep", str(path), "--out", str(out)]) == 1
    assert files_of(out / "runs") == before


def test_interpolate_draws_the_parametric_plot_per_seed_once(tmp_path, capsys):
    runs = [
        {"label": "small", "train.global_batch_size": 32},
        {"label": "large", "train.global_batch_size": 128},
    ]
    spec = write_spec(tmp_path, runs=runs, seeds=1, interpolate=["small", "large"])
    out = tmp_path / "s"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    record = json.loads((out / "interpolate" / "seed=0" / "interpolate.json").read_text())
    assert len(record["values"]["alpha"]) == 31
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["interpolate"] == {"0": "done"}
    before = (out / "interpolate" / "seed=0" / "interpolate.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out)]) == 0  # nothing to redo
    after = (out / "interpolate" / "seed=0" / "interpolate.json").stat().st_mtime_ns
    assert before == after


@pytest.mark.parametrize(
    ("base", "words"),
    [
        ("caltech101_fig4_b32.yaml", ["caltech101", "data.root"]),
        ("fmnist_mlp.yaml", ["fashion_mnist"]),
    ],
)
def test_missing_data_stops_the_sweep_before_any_run(tmp_path, capsys, base, words):
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": str(ROOT / "configs" / base),
                "overrides": {"data.root": str(empty)},
                "grid": {"train.global_batch_size": [32, 64]},
                "seeds": 2,
            }
        )
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err
    assert all(w in err[0] for w in words), err[0]
    assert not (tmp_path / "s").exists()  # nothing ran, no run failed six times


@pytest.mark.parametrize("spec", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=str)
@pytest.mark.parametrize("quick", [False, True])
def test_every_preset_and_its_quick_form_pass_the_spec_check(spec, quick):
    # e.g. a quick form with fewer epochs than a setting's warmup is refused before anything runs
    load_spec(spec, quick=quick)
