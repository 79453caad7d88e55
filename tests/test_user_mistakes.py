"""Every user mistake of the catalogue (issue 13) through the command line: exit code 2, exactly
one ``largebatch COMMAND: error:`` line that names the fix, no traceback.

A few run as real ``python -m largebatch`` subprocesses (what a user types, startup included);
the rest call :func:`largebatch.cli.main` in-process, which runs the same code minus the
interpreter start, to keep the module fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from largebatch.cli import main

REPO = Path(__file__).resolve().parents[1]
MLP = str(REPO / "configs" / "mnist1d_mlp.yaml")
FMNIST = "/usr/share/datasets/fashion-mnist"
TINY = [
    "data.num_samples=600",
    "model.hidden=[16]",
    "train.epochs=1",
    "train.global_batch_size=64",
    "train.progress=false",
    "optim.base_batch_size=64",
]


def check_one_error(stderr: str, rc: int | None, command: str, needle: str = "") -> str:
    """The contract: exit 2, one error line for ``command``, no traceback; returns the line."""
    assert rc == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("largebatch") and "error:" in ln]
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"largebatch {command}: error: "), stderr
    assert needle in errors[0], stderr
    return errors[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return f"data.cache_dir={tmp_path_factory.mktemp('cache')}"


def run_cli(args: list[str], capsys) -> tuple[int | None, str]:
    capsys.readouterr()
    try:
        rc: int | None = main(args)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    return rc, capsys.readouterr().err


def check_train_refused(tmp_path, capsys, cache: str, overrides: list[str], needle: str) -> None:
    """``train`` with these overrides: one error line naming ``needle``, no run started."""
    out = tmp_path / "run"
    rc, err = run_cli(["train", MLP, *TINY, cache, *overrides, "--out", str(out)], capsys)
    check_one_error(err, rc, "train", needle)
    assert not (out / "config.yaml").exists()


def run_process(args: list[str], cwd: Path) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "largebatch", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    return proc.returncode, proc.stderr


# ----------------------------------------------------------------------------------------------
# In subprocesses: what the user sees, interpreter and all


@pytest.mark.parametrize(
    "args, command, needle",
    [
        (["train", MLP, "train.epoch=3"], "train", "train.epoch"),  # unknown key
        (["train", "no_such_config.yaml"], "train", "no_such_config"),  # missing config file
        (["train", MLP, "--resume"], "train", "--out"),  # --resume without --out
        (["train", MLP, "--stop-after", "-1"], "train", "--stop-after"),
        (["train", MLP, "--stop-after", "0"], "train", "--stop-after"),
        (["train", MLP, "optim.lr=nan"], "train", "optim.lr"),
        (["download", "imagenet"], "download", "imagenet"),
    ],
)
def test_mistakes_in_a_subprocess(tmp_path, args, command, needle):
    rc, err = run_process(args, tmp_path)
    check_one_error(err, rc, command, needle)
    assert not (tmp_path / "runs").exists()  # no run directory started


def test_out_that_is_a_file_in_a_subprocess(tmp_path, cache):
    target = tmp_path / "taken"
    target.write_text("a file")
    rc, err = run_process(["train", MLP, *TINY, cache, "--out", str(target)], tmp_path)
    check_one_error(err, rc, "train", str(target))
    assert target.read_text() == "a file"


# ----------------------------------------------------------------------------------------------
# In-process: the same main(), the rest of the catalogue


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["optim.lr=abc"], "optim.lr"),  # wrong type
        (["train.epochs=2.5"], "train.epochs"),
        (["noise.alpha=nan"], "noise.alpha"),
        (["optim.lr=inf"], "optim.lr"),
        (["optim.momentum=-inf"], "optim.momentum"),
        (["no_section.key=1"], "no_section"),
        (["train.device=cuda:abc"], "train.device"),
        (["train.device=tpu"], "train.device"),
        (["model.name=cnn2d"], "cnn2d"),  # model does not fit MNIST-1D
        (["model.name=resnet20"], "resnet20"),
        (["model.name=transformer"], "model.name"),
        (["data.name=imagenet"], "data.name"),
        (["data.root=/tmp"], "data.root"),  # MNIST-1D reads no files
        (["data.train_subset=100000"], "100000"),
        (["optim.warmup_epochs=5"], "warmup"),
        (["train.global_batch_size=4096", "optim.base_batch_size=4096"], "4096"),
        (["train.global_batch_size=0"], "train.global_batch_size"),
    ],
)
def test_config_mistakes(tmp_path, capsys, cache, overrides, needle):
    check_train_refused(tmp_path, capsys, cache, overrides, needle)


@pytest.mark.parametrize("root", ["missing", "empty", "file"])
def test_explicit_data_root_that_holds_no_data(tmp_path, capsys, root):
    path = tmp_path / "root"
    if root == "empty":
        path.mkdir()
    elif root == "file":
        path.write_text("not a folder")
    over = ["data.name=fashion_mnist", "model.name=mlp", f"data.root={path}", *TINY[2:]]
    rc, err = run_cli(["train", MLP, *over, "--out", str(tmp_path / "run")], capsys)
    check_one_error(err, rc, "train", str(path))


@pytest.mark.skipif(not Path(FMNIST).is_dir(), reason="Fashion-MNIST not installed")
def test_cnn1d_does_not_fit_images(tmp_path, capsys):
    over = ["data.name=fashion_mnist", f"data.root={FMNIST}", "model.name=cnn1d", *TINY[2:]]
    rc, err = run_cli(["train", MLP, *over, "--out", str(tmp_path / "run")], capsys)
    line = check_one_error(err, rc, "train", "cnn1d")
    assert "mlp" in line  # names a model that fits


def test_unknown_preset(tmp_path, capsys):
    rc, err = run_cli(["train", "no_such_preset"], capsys)
    check_one_error(err, rc, "train", "no_such_preset")


def test_out_that_cannot_be_created(tmp_path, capsys, cache):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = run_cli(["train", MLP, *TINY, cache, "--out", str(blocker / "run")], capsys)
    check_one_error(err, rc, "train", "--out")


def test_run_dir_mistakes(tmp_path, capsys, cache):
    out = str(tmp_path / "run")
    assert run_cli(["train", MLP, *TINY, cache, "--out", out], capsys)[0] == 0
    # the same --out again without --resume
    rc, err = run_cli(["train", MLP, *TINY, cache, "--out", out], capsys)
    check_one_error(err, rc, "train", "--resume")
    # --resume with a changed config
    changed = ["train", MLP, *TINY, cache, "optim.lr=0.5", "--out", out, "--resume"]
    rc, err = run_cli(changed, capsys)
    check_one_error(err, rc, "train", "optim.lr")
    # --resume of a cosine run with another length
    cos = str(tmp_path / "cos")
    over = [*TINY, cache, "optim.schedule=cosine"]
    assert run_cli(["train", MLP, *over, "--out", cos, "--stop-after", "1"], capsys)[0] == 0
    rc, err = run_cli(["train", MLP, *over, "train.epochs=3", "--out", cos, "--resume"], capsys)
    check_one_error(err, rc, "train", "cosine")
    # a damaged checkpoint
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    rc, err = run_cli(["train", MLP, *TINY, cache, "--out", out, "--resume"], capsys)
    check_one_error(err, rc, "train", "last.pt")
    assert "\x1b" not in err


@pytest.mark.parametrize(
    "args, command",
    [
        (["report", "NOWHERE"], "report"),
        (["download", "nope"], "download"),
    ],
)
def test_other_commands(tmp_path, capsys, args, command):
    args = [str(tmp_path / a) if a == "NOWHERE" else a for a in args]
    rc, err = run_cli(args, capsys)
    check_one_error(err, rc, command)


# ----------------------------------------------------------------------------------------------
# Round 2 ("Nothing silent, nothing lost"): keys that would do nothing, sizes that are not
# numbers, noise attached to the wrong optimizer, damaged run directories, report and bench


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["noise.scale=0.5"], "noise.alpha"),  # the shaped kinds' key, with the isotropic kind
        (["noise.match=step"], "noise.kind=microbatch"),  # the shaped kinds' size rule
        (["noise.kind=diagonal", "noise.gamma=0.5"], "noise.kind=isotropic"),  # isotropic decay
        (["optim.lars_form=timm"], "optim.name=lars"),  # LARS keys under optim.name=sgd
        (["optim.trust_coefficient=0.01"], "optim.name=lars"),
    ],
)
def test_keys_that_would_do_nothing(tmp_path, capsys, cache, overrides, needle):
    check_train_refused(tmp_path, capsys, cache, overrides, needle)


def test_the_keys_still_work_where_they_act():
    from largebatch.config import load_config

    assert load_config(None, ["noise.kind=multiplicative", "noise.scale=0.5"]).noise.scale == 0.5
    assert load_config(None, ["noise.kind=diagonal", "noise.match=step"]).noise.match == "step"
    assert load_config(None, ["noise.alpha=1e-5", "noise.gamma=0.5"]).noise.gamma == 0.5
    cfg = load_config(
        None, ["optim.name=lars", "optim.lars_form=timm", "optim.trust_coefficient=0.01"]
    )
    assert (cfg.optim.lars_form, cfg.optim.trust_coefficient) == ("timm", 0.01)


def test_noise_sizes_that_are_not_finite_numbers_are_refused():
    import torch

    from largebatch import GradientNoise
    from largebatch.gradient.diagonal_noise import DiagonalNoise
    from largebatch.gradient.microbatch_noise import MicrobatchNoise
    from largebatch.gradient.multiplicative_noise import MultiplicativeNoise

    params = list(torch.nn.Linear(3, 2).parameters())
    build = {
        "alpha": lambda v: GradientNoise(params, alpha=v),
        "gamma": lambda v: GradientNoise(params, alpha=1e-5, gamma=v),
        "covariance_multiplier": lambda v: MicrobatchNoise(params, v, micro_batch_size=4),
        "covariance_multiplier ": lambda v: DiagonalNoise(params, v, micro_batch_size=4),
        " covariance_multiplier": lambda v: MultiplicativeNoise(v, global_batch_size=8),
    }
    for name, make in build.items():
        for value in (float("inf"), float("nan"), -1e-3):
            with pytest.raises(ValueError, match=f"{name.strip()} .*finite number >= 0"):
                make(value)
        make(0.0)  # off, and allowed


def test_noise_attached_to_another_models_optimizer_is_refused():
    import torch

    from largebatch import GradientNoise

    model, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    noise = GradientNoise(model.parameters(), alpha=1e-5)
    with pytest.raises(ValueError, match="not among the optimizer's parameters"):
        noise.attach(torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="1 of its 2 parameters"):  # the bias is not stepped
        noise.attach(torch.optim.SGD([model.weight], lr=0.1))
    noise.attach(torch.optim.SGD(model.parameters(), lr=0.1)).remove()  # its own: fine


def test_bench_with_zero_threads(capsys):
    rc, err = run_cli(["bench", "--threads", "0"], capsys)
    check_one_error(err, rc, "bench", "--threads")


TRAINED = [*TINY, "train.epochs=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> Path:
    """One finished two-epoch run, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", MLP, *TRAINED, cache, "--out", str(out)]) == 0
    return out


def copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


@pytest.mark.parametrize("checkpoint", ["text", "link to text", "dangling link"])
def test_checkpoint_that_is_another_file(tmp_path, capsys, cache, trained, checkpoint):
    run = copy_run(trained, tmp_path / "run")
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.unlink()
    notes = tmp_path / "notes.txt"
    if checkpoint == "text":
        ckpt.write_text("hello, these are my notes\n")
    else:
        if checkpoint == "link to text":
            notes.write_text("hello, these are my notes\n")
        ckpt.symlink_to(notes)
    resume = ["train", MLP, *TRAINED, cache, "--out", str(run), "--resume"]
    rc, err = run_cli(resume, capsys)
    check_one_error(err, rc, "train", "last.pt")
    rc, err = run_cli(["analyze", "hessian", str(run)], capsys)
    check_one_error(err, rc, "analyze", "last.pt")
    assert ckpt.is_symlink() == (checkpoint != "text")  # left as it was, not trained over


def _damage_config(run: Path, how: str, tmp_path: Path) -> Path:
    """Make ``run/config.yaml`` not YAML, a YAML list, or a ``!!python`` tag that would make
    ``tmp_path/executed`` if it were ever constructed."""
    marker = tmp_path / "executed"
    text = {
        "not yaml": "data: {name: [mnist1d\n  : : :\n",
        "a list": "- data\n- model\n",
        "python tag": f"data: !!python/object/apply:os.mkdir ['{marker}']\n",
    }[how]
    (run / "config.yaml").write_text(text)
    return marker


@pytest.mark.parametrize("how", ["not yaml", "a list", "python tag"])
def test_run_config_that_is_not_a_config(tmp_path, capsys, cache, trained, how):
    run = copy_run(trained, tmp_path / "runs" / "bad")
    marker = _damage_config(run, how, tmp_path)
    resume = ["train", MLP, *TRAINED, cache, "--out", str(run), "--resume"]
    rc, err = run_cli(resume, capsys)
    check_one_error(err, rc, "train", "config.yaml")
    rc, err = run_cli(["analyze", "hessian", str(run)], capsys)
    check_one_error(err, rc, "analyze", "config.yaml")
    # the report reads the good run and says which one it skipped and why
    good = copy_run(trained, tmp_path / "runs" / "good")
    rc, err = run_cli(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")], capsys)
    assert rc == 0 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if "skipped" in ln]
    assert str(run) in line and "config.yaml" in line
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["runs"] == [str(good)]
    assert not marker.exists()  # nothing executed


@pytest.mark.parametrize("manifest", [True, False])
def test_report_lists_a_run_without_config(tmp_path, capsys, trained, manifest):
    sweep = tmp_path / "sweep"
    copy_run(trained, sweep / "runs" / "a")
    lost = copy_run(trained, sweep / "runs" / "b")
    (lost / "config.yaml").unlink()
    if manifest:
        runs = [{"name": n, "dir": f"runs/{n}", "label": n, "status": "completed"} for n in "ab"]
        (sweep / "sweep.json").write_text(json.dumps({"name": "s", "runs": runs}))
    rc, err = run_cli(["report", str(sweep), "--out", str(tmp_path / "rep")], capsys)
    assert rc == 0, err
    (line,) = [ln for ln in err.splitlines() if "skipped" in ln]
    assert str(lost) in line and "no config.yaml" in line


def test_report_does_not_average_a_truncated_run(tmp_path, capsys, trained):
    copy_run(trained, tmp_path / "runs" / "whole")
    cut = copy_run(trained, tmp_path / "runs" / "cut")
    lines = (cut / "metrics.jsonl").read_text().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_text("".join(lines[:-1]))  # lost its last line
    rc, err = run_cli(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")], capsys)
    assert rc == 0, err
    (line,) = [ln for ln in err.splitlines() if "skipped" in ln]
    assert str(cut) in line and "truncated: 1 of 2 epochs" in line
    (row,) = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert row["final_val_acc"]["n"] == 1
    assert row["not_completed"] == {"cut": "truncated: 1 of 2 epochs"}


def test_report_gap_and_out_mistakes(tmp_path, capsys, trained):
    runs = tmp_path / "runs"
    copy_run(trained, runs / "a")
    rc, err = run_cli(["report", str(runs), "--gap", "all", "all"], capsys)
    check_one_error(err, rc, "report", "--gap")
    taken = tmp_path / "taken.md"
    taken.write_text("mine")
    rc, err = run_cli(["report", str(runs), "--out", str(taken)], capsys)
    check_one_error(err, rc, "report", str(taken))
    assert taken.read_text() == "mine"


def test_val_subset_is_stratified_the_same_for_every_run_and_refused_where_it_cannot_act():
    from largebatch.config import ConfigError, load_config
    from largebatch.data import build_dataset

    base = ["data.num_samples=1000"]
    full = build_dataset(load_config(None, base).data)
    cfg = load_config(None, [*base, "data.val_subset=100"]).data
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert len(a.val) == 100 and a.info["num_val"] == 100
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.val.x, b.val.x)  # same for every run
    # class proportions kept: each class's count within one of its share of the full split
    counts_full = torch.bincount(full.val.y, minlength=10).float() * 100 / len(full.val)
    counts = torch.bincount(a.val.y, minlength=10).float()
    assert torch.all((counts - counts_full).abs() <= 1.0)
    with pytest.raises(ConfigError, match="larger than the validation set"):
        build_dataset(load_config(None, [*base, "data.val_subset=100000"]).data)
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(None, [*base, "data.val_subset=0"])


# ----------------------------------------------------------------------------------------------
# Nothing silent, nothing lost, round 2


def _sweep_spec(folder: Path, text: str) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(
        f"base: {MLP}\n"
        "overrides: {data.num_samples: 600, train.epochs: 1, train.progress: false}\n" + text
    )
    return spec


def test_sweep_spec_with_two_settings_of_one_label(tmp_path, capsys):
    spec = _sweep_spec(
        tmp_path,
        'runs:\n  - {label: "x"}\n  - {label: "x", noise.alpha: 1.0e-5}\n',
    )
    rc, err = run_cli(["sweep", str(spec), "--out", str(tmp_path / "sweep")], capsys)
    line = check_one_error(err, rc, "sweep", "'x'")
    assert "label" in line
    assert not (tmp_path / "sweep").exists()


def test_sweep_out_that_is_a_file(tmp_path, capsys):
    spec = _sweep_spec(tmp_path, "")
    target = tmp_path / "taken"
    target.write_text("a file")
    rc, err = run_cli(["sweep", str(spec), "--out", str(target)], capsys)
    check_one_error(err, rc, "sweep", str(target))
    assert target.read_text() == "a file"
    rc, err = run_cli(["sweep", str(spec), "--out", str(target / "sub")], capsys)
    check_one_error(err, rc, "sweep", "--out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a read-only folder")
def test_sweep_out_that_is_not_writable(tmp_path, capsys):
    spec = _sweep_spec(tmp_path, "")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, err = run_cli(["sweep", str(spec), "--out", str(locked / "sweep")], capsys)
        check_one_error(err, rc, "sweep", "writable")
    finally:
        locked.chmod(0o700)


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs": a few hundred bytes whose aliases expand to width**levels values."""
    names = "abcdefghijklmnop"
    items = [f"{names[0]}: &{names[0]} [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        items.append(f"{names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * width) + "]")
    return "\n".join(items) + "\n"


def _timed(args: list[str], capsys) -> tuple[int | None, str, float]:
    import time

    started = time.perf_counter()
    rc, err = run_cli(args, capsys)
    return rc, err, time.perf_counter() - started


def test_yaml_alias_bomb_in_a_config_file(tmp_path, capsys):
    bomb = _alias_bomb()
    assert len(bomb) < 1000
    config = tmp_path / "bomb.yaml"
    config.write_text(bomb)
    rc, err, took = _timed(["train", str(config), "--out", str(tmp_path / "run")], capsys)
    check_one_error(err, rc, "train", "expand to more than")
    assert took < 1.0
    assert not (tmp_path / "run").exists()


def test_yaml_alias_bomb_in_an_override(tmp_path, capsys):
    flow = "{" + _alias_bomb().strip().replace("\n", ", ") + "}"
    rc, err, took = _timed(
        ["train", MLP, f"model.hidden={flow}", "--out", str(tmp_path / "run")], capsys
    )
    line = check_one_error(err, rc, "train", "model.hidden")
    assert "expand to more than" in line
    assert took < 1.0
    assert not (tmp_path / "run").exists()


def test_yaml_alias_bomb_in_a_sweep_spec(tmp_path, capsys):
    spec = _sweep_spec(tmp_path, "description: &top\n  " + _alias_bomb().replace("\n", "\n  "))
    rc, err, took = _timed(["sweep", str(spec), "--out", str(tmp_path / "sweep")], capsys)
    check_one_error(err, rc, "sweep", "expand to more than")
    assert took < 1.0
    assert not (tmp_path / "sweep").exists()


def test_yaml_alias_bomb_in_a_run_config(tmp_path, capsys, trained):
    run = copy_run(trained, tmp_path / "run")
    (run / "config.yaml").write_text(_alias_bomb())
    rc, err, took = _timed(["analyze", "hessian", str(run)], capsys)
    check_one_error(err, rc, "analyze", "expand to more than")
    assert took < 1.0


def test_yaml_aliases_within_the_budget_still_work(tmp_path):
    from largebatch.config import load_config

    config = tmp_path / "aliased.yaml"
    config.write_text(
        "train: &t {epochs: 1, global_batch_size: 64}\nmodel: {name: mlp, hidden: &h [16, 16]}\n"
    )
    cfg = load_config(config, ["data.num_samples=600", "optim.base_batch_size=64"])
    assert cfg.model.hidden == [16, 16] and cfg.train.epochs == 1


def test_resume_to_fewer_epochs_than_the_run_made(tmp_path, capsys, cache, trained):
    run = copy_run(trained, tmp_path / "run")
    before = (run / "config.yaml").read_bytes()
    summary = (run / "summary.json").read_bytes()
    rc, err = run_cli(
        ["train", MLP, *TINY, cache, "train.epochs=1", "--out", str(run), "--resume"], capsys
    )
    line = check_one_error(err, rc, "train", "train.epochs>=2")
    assert "2 epochs" in line
    assert (run / "config.yaml").read_bytes() == before  # the record is not rewritten
    assert (run / "summary.json").read_bytes() == summary
    # the run's own length still resumes (nothing to do) and says so
    rc = run_cli(["train", MLP, *TRAINED, cache, "--out", str(run), "--resume"], capsys)[0]
    assert rc == 0


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_sigterm_to_a_sweep_stops_its_runs_and_leaves_no_orphan(tmp_path, cache):
    import signal
    import time

    epochs = 30
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"base: {MLP}\n"
        f"overrides: {{data.num_samples: 600, train.epochs: {epochs}, train.progress: false, "
        "model.hidden: [16], train.global_batch_size: 64, optim.base_batch_size: 64, "
        f"data.cache_dir: '{cache.split('=', 1)[1]}'}}\n"
    )
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "largebatch", "sweep", str(spec), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "runs" / "seed=0" / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, "the run never made an epoch"
            time.sleep(0.1)
        children = _children_of(proc.pid)
        assert children
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 143, err
    assert "Traceback" not in err, err
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, and reaped by the sweep
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["stopped"]
    summary = json.loads((out / "runs" / "seed=0" / "summary.json").read_text())
    assert summary["status"] == "stopped"
    done = len(metrics.read_text().splitlines())
    assert done < epochs
    rc, err = run_process(["sweep", str(spec), "--out", str(out)], tmp_path)
    assert rc == 0, err
    manifest = json.loads((out / "sweep.json").read_text())
    assert [(r["status"], r["action"]) for r in manifest["runs"]] == [("completed", "resume")]
    assert len(metrics.read_text().splitlines()) == epochs


def test_a_second_sweep_into_a_folder_in_use(tmp_path, capsys):
    """A sweep folder is locked like a run directory: a second sweep into it stops at once,
    naming the holder's pid and the fix; the folder's files are left alone."""
    import fcntl

    spec = _sweep_spec(tmp_path, "")
    out = tmp_path / "sweep"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # what a running sweep holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("424242")
        held.flush()
        rc, err = run_cli(["sweep", str(spec), "--out", str(out)], capsys)
        line = check_one_error(err, rc, "sweep", "pid 424242")
        assert "another --out" in line and "wait" in line
        assert not (out / "sweep.json").exists()
        assert not (out / "logs").exists()
    # once the holder is gone (the OS drops its lock), the folder is free again
    with open(out / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # exited (a zombie left to an init that does not reap)


def test_kill_9_of_a_sweep_stops_its_run_at_a_checkpoint(tmp_path, cache):
    import signal
    import time

    epochs = 1000  # about 20 s: still training well after the kill unless it stops
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"base: {MLP}\n"
        f"overrides: {{data.num_samples: 600, train.epochs: {epochs}, train.progress: false, "
        "model.hidden: [16], train.global_batch_size: 64, optim.base_batch_size: 64, "
        f"data.cache_dir: '{cache.split('=', 1)[1]}'}}\n"
    )
    out = tmp_path / "sweep"
    run_dir = out / "runs" / "seed=0"
    metrics = run_dir / "metrics.jsonl"
    args = [sys.executable, "-m", "largebatch", "sweep", str(spec), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    child = None
    try:
        deadline = time.time() + 120
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, "the run never made an epoch"
            time.sleep(0.1)
        child = int((run_dir / ".lock").read_text().strip())
        assert child in _children_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 10
        while not _gone(child) and time.time() < deadline:
            time.sleep(0.05)
        assert _gone(child), "the orphaned run kept training after its sweep was killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped", summary
    done = len(metrics.read_text().splitlines())
    assert done < epochs
    rc, err = run_process(["sweep", str(spec), "--out", str(out)], tmp_path)
    assert rc == 0, err
    manifest = json.loads((out / "sweep.json").read_text())
    assert [(r["status"], r["action"]) for r in manifest["runs"]] == [("completed", "resume")]
    assert len(metrics.read_text().splitlines()) == epochs


# ----------------------------------------------------------------------------------------------
# --out and disk errors in every command: one error line, nothing lost


def test_a_full_disk_during_a_checkpoint_loses_nothing(tmp_path, capsys, cache, monkeypatch):
    import errno

    import torch

    from largebatch import checkpoint as ckpt_module

    out = tmp_path / "run"
    over = [*TINY, cache, "train.epochs=3"]
    real_save = torch.save
    calls = {"n": 0}

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint: half written, then the disk is full
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "checkpoints"))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", save_then_fill_the_disk)
    rc, err = run_cli(["train", MLP, *over, "--out", str(out)], capsys)
    line = check_one_error(err, rc, "train", "No space left on device")
    assert "--resume" in line and "free disk space" in line
    monkeypatch.undo()
    kept = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert kept["epoch"] == 1  # the first epoch's checkpoint stands, whole
    assert not list((out / "checkpoints").glob(".last.pt.tmp-*"))  # no half file left
    assert run_cli(["train", MLP, *over, "--out", str(out), "--resume"], capsys)[0] == 0
    reference = tmp_path / "reference"
    assert run_cli(["train", MLP, *over, "--out", str(reference)], capsys)[0] == 0
    a = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_disk_error_in_any_command_is_one_line(tmp_path, capsys, trained, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "rep" / "x"))

    monkeypatch.setattr(Path, "write_text", full)
    rc, err = run_cli(["report", str(trained), "--out", str(tmp_path / "rep")], capsys)
    check_one_error(err, rc, "report", "No space left on device")


@pytest.mark.parametrize(
    "command",
    [
        ["train", MLP, *TINY],
        ["sweep", str(REPO / "configs" / "sweeps" / "demo.yaml"), "--quick"],
        ["compare", str(REPO / "configs" / "compare" / "demo.yaml"), "--quick"],
        ["demo", "--quick"],
        ["bench", MLP, "--steps", "1", "--batch-sizes", "8"],
        ["report", "TRAINED"],
        ["analyze", "interpolate", "TRAINED", "TRAINED", "--range", "0:1:2"],
    ],
)
def test_out_that_is_a_file_in_every_command(tmp_path, capsys, trained, command):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    args = [str(trained) if a == "TRAINED" else a for a in command]
    rc, err = run_cli([*args, "--out", str(taken)], capsys)
    check_one_error(err, rc, command[0], str(taken))
    assert taken.read_text() == "a file"
