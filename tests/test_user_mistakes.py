"""Every user mistake of the catalogue (issue 13) through the command line: exit code 2, exactly
one ``largebatch COMMAND: error:`` line that names the fix, no traceback.

A few run as real ``python -m largebatch`` subprocesses (what a user types, startup included);
the rest call :func:`largebatch.cli.main` in-process, which runs the same code minus the
interpreter start, to keep the module fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    out = tmp_path / "run"
    rc, err = run_cli(["train", MLP, *TINY, cache, *overrides, "--out", str(out)], capsys)
    check_one_error(err, rc, "train", needle)
    assert not (out / "config.yaml").exists()


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
