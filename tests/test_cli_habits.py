"""CLI habits: shell completion, presets by name, one thread budget, the bench default, the ETA,
a line for every figure asked for and not drawn, the Keskar report (epsilon-sharpness and the
parametric plot from a real tiny sweep)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from largebatch.cli import build_parser, main
from largebatch.experiments import sweep as sweep_module
from largebatch.experiments.eta import Eta, Job
from largebatch.presets import header_field, list_presets, resolve_in
from tests.test_report import make_run

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "configs" / "mnist1d_mlp.yaml"
TINY = {"train.epochs": 2, "data.num_samples": 600, "train.progress": False}


def one_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"largebatch {command}: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# 1. shell completion


def subcommands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_completion_script_names_every_command_and_train_option(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for name in subcommands():
        assert name in script, name
    for action in subcommands()["train"]._actions:
        for option in action.option_strings:
            assert option in script, option
    for shell in ("zsh", "fish"):
        assert main(["completion", shell]) == 0
        assert "sweep" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_options_and_presets(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "largebatch.bash"
    script.write_text(capsys.readouterr().out)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    probe = f"""
source {script}
complete_words() {{
  COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=()
  _shtab_largebatch
  echo "${{COMPREPLY[*]}}"
}}
complete_words largebatch tr
complete_words largebatch train --o
complete_words largebatch sweep kesk
complete_words largebatch analyze hessian --bn-mode ""
"""
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["train"]
    assert lines[1].split() == ["--out"]
    assert lines[2].split() == ["keskar_sharpness"]  # a sweep preset's name
    assert lines[3].split() == ["eval", "train"]


def test_completion_without_shtab_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "shtab", None)  # import shtab -> ImportError
    assert main(["completion", "bash"]) == 2
    assert "largebatch[completion]" in one_error(capsys, "completion")


# ----------------------------------------------------------------------------------------------
# 2. presets by name in every command, and their times in `largebatch list`


def test_sweep_and_compare_take_preset_names():
    for name in (
        "demo",
        "keskar_sharpness",
        "demo.yaml",
        "sweeps/demo",
        "configs/sweeps/demo.yaml",
    ):
        preset = list_presets("sweeps")[name.split("/")[-1].removesuffix(".yaml")]
        assert resolve_in(name, "sweeps", "sweep").resolve() == preset.resolve()
    spec = sweep_module.load_spec(resolve_in("keskar_sharpness", "sweeps", "sweep"), quick=True)
    assert spec.name == "keskar_sharpness" and len(spec.runs) == 2
    from largebatch.compare.protocol import _spec_path

    assert _spec_path("demo").resolve() == list_presets("compare")["demo"].resolve()


@pytest.mark.parametrize(
    ("command", "names"),
    [("sweep", list_presets("sweeps")), ("compare", list_presets("compare"))],
)
def test_an_unknown_preset_name_is_one_line_listing_the_names(tmp_path, capsys, command, names):
    assert main([command, "no_such_preset", "--quick", "--out", str(tmp_path / "x")]) == 2
    line = one_error(capsys, command)
    assert "no_such_preset" in line and all(n in line for n in names)
    assert not (tmp_path / "x").exists()


def test_list_shows_each_sweep_and_comparison_preset_with_its_time(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for subdir, command in (("sweeps", "sweep"), ("compare", "compare")):
        section = out[out.index(f"{command} presets (largebatch {command} ") :].splitlines()[1:]
        for name, path in list_presets(subdir).items():
            line = next(ln for ln in section if ln.split()[:1] == [name])
            time = header_field(path, "Time")
            assert time, f"{path}: no '# Time:' field in the header"
            assert line.endswith(f"time: {time}")
            if subdir == "sweeps" and name == "demo":
                assert "3 min 44 s" in line  # the README's measurement, not "see the README"


# ----------------------------------------------------------------------------------------------
# 3. one thread budget per machine


def test_workers_split_the_cores_for_presets_without_train_threads(tmp_path, monkeypatch):
    assert yaml.safe_load(MLP.read_text())["train"].get("threads") is None
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {"base": str(MLP), "overrides": TINY, "grid": {"train.global_batch_size": [32, 64]}}
        )
    )
    seen = []

    def fake_train(spec, run, run_dir, log, threads, children=None):
        seen.append(threads)
        return {"status": "completed", "returncode": 0, "message": "", "wall_s": 1.0}

    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(sweep_module, "_train", fake_train)
    monkeypatch.setattr(sweep_module, "_device_is_cuda", lambda spec: False)
    spec = sweep_module.load_spec(spec_path)
    _, manifest = sweep_module.run_sweep(spec, tmp_path / "out", workers=4, quiet=True)
    assert seen == [2, 2] and manifest["threads_per_run"] == 2


def test_analysis_children_get_the_per_worker_threads(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs.get("env") or {}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep_module.subprocess, "run", fake_run)
    assert sweep_module._analyze(tmp_path, ["hessian", "--top-k", "1"], tmp_path / "log", 3)
    cmd, env = calls[-1]
    assert cmd[-2:] == ["--threads", "3"] and env["OMP_NUM_THREADS"] == "3"
    sweep_module._analyze(tmp_path, ["hessian", "--threads", "2"], tmp_path / "log", 3)
    assert calls[-1][0].count("--threads") == 1  # the spec's own choice stands
    sweep_module._analyze(tmp_path, ["hessian"], tmp_path / "log", None)
    assert "--threads" not in calls[-1][0]  # one run at a time: torch's default, as train


def test_analyze_threads_must_be_positive(tmp_path, capsys):
    assert main(["analyze", "hessian", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads" in one_error(capsys, "analyze")


def test_analyze_threads_default_to_the_runs_train_threads(tmp_path):
    import argparse

    from largebatch.analysis.cli import _run_threads

    run = make_run(tmp_path / "run", 64, 0, [0.5], threads=3)
    assert _run_threads(argparse.Namespace(run=str(run))) == 3
    assert _run_threads(argparse.Namespace(run_a=str(run), run_b=str(run))) == 3
    assert _run_threads(argparse.Namespace(run=str(tmp_path / "none"))) is None


# ----------------------------------------------------------------------------------------------
# 3 and 7: a real tiny sweep with analyses, then its report


@pytest.fixture(scope="module")
def analysed_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keskar")
    spec = folder / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": str(MLP),
                "overrides": TINY | {"model.hidden": [16], "optim.scaling": "none"},
                "grid": {"train.global_batch_size": [16, 128]},
                "analyze": ["sharpness --samples 128 --max-iter 2"],
                "interpolate": ["global_batch_size=16", "global_batch_size=128"],
            }
        )
    )
    out = folder / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "2"]) == 0
    return out


@pytest.mark.slow
def test_the_sweeps_analyses_run_with_the_training_runs_threads(analysed_sweep):
    threads = max(1, (os.cpu_count() or 1) // 2)
    logs = "\n".join(p.read_text() for p in (analysed_sweep / "logs").glob("*.log"))
    commands = [ln for ln in logs.splitlines() if ln.startswith("$ ")]
    train = [c for c in commands if " train " in c]
    analyses = [c for c in commands if " analyze " in c]
    assert len(train) == 2 and len(analyses) == 3  # 2 sharpness, 1 interpolate
    assert all(f"train.threads={threads}" in c for c in train)
    assert all(c.endswith(f"--threads {threads}") for c in analyses), analyses
    for run in (analysed_sweep / "runs").iterdir():
        record = json.loads((run / "analysis" / "sharpness.json").read_text())
        assert record["threads"] == threads


@pytest.mark.slow
def test_report_shows_eps_sharpness_and_the_parametric_plot(analysed_sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(analysed_sweep), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    result = json.loads((out / "report.json").read_text())
    rows = result["eps_sharpness"]
    assert [r["batch"] for r in rows] == [16, 128]
    for row in rows:
        (run,) = (analysed_sweep / "runs").glob(f"global_batch_size={row['batch']},seed=0")
        record = json.loads((run / "analysis" / "sharpness.json").read_text())
        assert row["per_run"] == [record["values"]["sharpness"]] and row["epsilon"] == 1e-3
        assert f"{record['values']['sharpness']:.3g}" in report
    assert "## Epsilon-sharpness" in report and "## Parametric plot" in report
    (pair,) = result["interpolation"]
    assert (pair["a"], pair["b"], pair["seeds"]) == (
        "global_batch_size=16",
        "global_batch_size=128",
        [0],
    )
    for png in ("eps_sharpness.png", "interpolation.png"):
        assert png in result["figures"] and f"]({png})" in report
        assert (out / png).stat().st_size > 10_000


def test_parametric_plot_from_a_hand_made_interpolation(tmp_path):
    """``largebatch analyze interpolate A B`` by hand writes A/analysis/interpolate.json: the
    report finds it there too, the ends named by their settings, two seeds in one panel."""
    for seed in (0, 1):
        a = make_run(tmp_path / f"b64s{seed}", 64, seed, [0.8, 0.9])
        make_run(tmp_path / f"b256s{seed}", 256, seed, [0.7, 0.8])
        values = {
            "alpha": [-0.5, 0.0, 0.5, 1.0, 1.5],
            "train_loss": [0.9, 0.2, 0.5, 0.3, 1.2],
            "val_loss": [1.0, 0.4, 0.7, 0.6, 1.4],
            "train_accuracy": [0.6, 0.95, 0.8, 0.9, 0.5],
            "val_accuracy": [0.55, 0.9, 0.75, 0.8, 0.45],
        }
        (a / "analysis").mkdir()
        record = {"run_dir": str(a), "run_b": str(tmp_path / f"b256s{seed}"), "values": values}
        (a / "analysis" / "interpolate.json").write_text(json.dumps(record))
    result = main(["report", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert result == 0
    (pair,) = json.loads((tmp_path / "rep" / "report.json").read_text())["interpolation"]
    assert pair["a"] == "global_batch_size=64" and pair["b"] == "global_batch_size=256"
    assert sorted(pair["seeds"]) == [0, 1]
    assert (tmp_path / "rep" / "interpolation.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------------------------
# 4. bench with no config: MNIST-1D, no Fashion-MNIST needed


def test_bench_without_a_config_needs_no_fashion_mnist(tmp_path, monkeypatch):
    import largebatch.data.idx as idx

    def no_idx_data(*args, **kwargs):
        raise AssertionError("bench with no config read IDX (Fashion-MNIST) files")

    monkeypatch.setattr(idx, "search_dirs", no_idx_data)
    out = tmp_path / "bench"
    args = ["--batch-sizes", "16,32", "--steps", "1", "--repeats", "1", "--warmup", "0"]
    assert main(["bench", *args, "--out", str(out)]) == 0
    record = json.loads((out / "bench.json").read_text())
    assert "on mnist1d" in record["title"] and "Config mnist1d_cnn" in record["note"]


# ----------------------------------------------------------------------------------------------
# 5. the ETA weighted by each setting's measured cost


def test_eta_weights_runs_left_by_their_settings_measured_cost():
    eta = Eta(workers=1)
    eta.add(Job("B=32", epochs=10, examples=1000), seconds=100.0)  # 10 s an epoch
    eta.add(Job("B=512", epochs=10, examples=1000), seconds=20.0)  # 2 s an epoch
    est = eta.estimate([(Job("B=32", 10, 1000), 0.0), (Job("B=512", 5, 1000), 0.0)])
    assert est.seconds == pytest.approx(100 + 10) and not est.rough
    assert est.format() == "ETA 1m50s"
    # a run already running counts with what it has left
    est = eta.estimate([(Job("B=32", 10, 1000), 60.0)])
    assert est.seconds == pytest.approx(40)


def test_eta_of_an_untimed_setting_is_rough_from_the_cost_per_example():
    eta = Eta(workers=2)
    eta.add(Job("B=32", epochs=10, examples=1000), seconds=50.0)  # 5 ms an example
    left = [(Job("B=32", 10, 1000), 0.0), (Job("half data", 10, 500), 0.0)]
    est = eta.estimate(left)
    assert est.seconds == pytest.approx(50)  # two workers: 50 s and 25 s side by side
    assert est.rough and est.untimed == ("half data",)
    assert est.format() == "ETA ~50s (rough: 1 setting not timed yet)"
    eta.add(Job("half data", 10, 500), seconds=40.0)  # measured: slower than the estimate
    assert eta.estimate(left[1:]).seconds == pytest.approx(40) and not eta.estimate(left).rough


def test_eta_lays_runs_on_workers_and_says_unknown_before_any_timing():
    assert Eta(workers=3).estimate([(Job("a", 1), 0.0)]).format().startswith("ETA unknown")
    eta = Eta(workers=2)
    eta.add(Job("a", 1), 10.0)
    # 4 runs of 10 s on 2 workers, one of them running for 4 s: 6, then 10 + 10 on the other
    left = [(Job("a", 1), 4.0), (Job("a", 1), 0.0), (Job("a", 1), 0.0), (Job("a", 1), 0.0)]
    assert eta.estimate(left).seconds == pytest.approx(20)


# ----------------------------------------------------------------------------------------------
# 6. a line whenever a requested figure is not drawn


def test_a_target_no_setting_reaches_is_named_not_silently_dropped(tmp_path, capsys):
    make_run(tmp_path / "b64", 64, 0, [0.7, 0.85])
    make_run(tmp_path / "b256", 256, 0, [0.6, 0.82])
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path), "--out", str(out), "--target", "95"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "steps_to_target.png" in ln]
    assert len(err) == 1 and "95.0%" in err[0] and "85.0%" in err[0], err
    assert "- steps_to_target.png not drawn: no run reached" in (out / "report.md").read_text()
    assert not (out / "steps_to_target.png").exists()
    # reached by one batch size only: no line to draw, and it says so
    assert main(["report", str(tmp_path), "--out", str(out), "--target", "84"]) == 0
    err = capsys.readouterr().err
    assert "only runs at B=64 reached 84.0%" in err and "never reached by" in err


def test_a_setting_left_out_of_steps_to_target_is_named(tmp_path, capsys):
    make_run(tmp_path / "b64", 64, 0, [0.7, 0.85])
    make_run(tmp_path / "b256", 256, 0, [0.6, 0.82])
    make_run(tmp_path / "b1024", 1024, 0, [0.5, 0.6])
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path), "--out", str(out), "--target", "80"]) == 0
    err = capsys.readouterr().err
    assert "steps_to_target.png leaves out global_batch_size=1024" in err
    assert (out / "steps_to_target.png").is_file()
    # without --target (the default: reached by every run) nothing is left out, nothing said
    assert main(["report", str(tmp_path), "--out", str(out)]) == 0
    assert "steps_to_target" not in capsys.readouterr().err


def test_runs_with_only_a_2d_surface_are_named(tmp_path, capsys):
    run = make_run(tmp_path / "b64", 64, 0, [0.7, 0.85])
    (run / "analysis").mkdir()
    (run / "analysis" / "surface_2d.json").write_text(json.dumps({"values": {}}))
    assert main(["report", str(tmp_path / "b64"), "--out", str(tmp_path / "rep")]) == 0
    assert (
        "surfaces.png not drawn: 1 run(s) that hold only a 2-D surface" in capsys.readouterr().err
    )
