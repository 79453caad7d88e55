"""Packaging: presets usable by name from any directory (and shipped in the wheel), --version,
LICENSE, py.typed, and mypy clean on the public API (the modules in pyproject's [tool.mypy])."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import largebatch
from largebatch.cli import main
from largebatch.errors import UserError
from largebatch.presets import list_presets, presets_root, resolve_preset

REPO = Path(__file__).resolve().parents[1]


def test_license_and_py_typed():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "largebatch contributors" in text
    assert (Path(largebatch.__file__).parent / "py.typed").is_file()


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"largebatch {largebatch.__version__}"
    assert importlib.metadata.version("largebatch") == largebatch.__version__


def test_presets_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = resolve_preset("mnist1d_cnn")
    assert by_name.is_file() and by_name.name == "mnist1d_cnn.yaml"
    assert resolve_preset("mnist1d_cnn.yaml") == by_name
    assert resolve_preset("configs/mnist1d_cnn.yaml") == by_name  # the presets' header commands
    assert resolve_preset("sweeps/demo").name == "demo.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("train:\n  epochs: 1\n")
    assert resolve_preset("mine.yaml") == Path("mine.yaml")  # a file wins over the presets
    with pytest.raises(UserError, match="presets: .*mnist1d_cnn"):
        resolve_preset("no_such_preset")


def test_every_preset_loads_as_a_config(tmp_path, monkeypatch):
    from largebatch.config import load_config

    presets = list_presets()
    assert {"mnist1d_cnn", "mnist1d_mlp", "caltech101_fig4_b128"} <= set(presets)
    monkeypatch.chdir(tmp_path)
    for name in presets:
        load_config(str(resolve_preset(name)), [])


def test_list_shows_presets_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "presets" in out and "  mnist1d_cnn\n" in out
    assert str(presets_root()) in out


@pytest.mark.slow
def test_wheel_ships_presets_and_py_typed(tmp_path):
    """A regular (non-editable) build carries configs/ as largebatch/configs/."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "LICENSE", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "configs", src / "configs")
    shutil.copytree(
        REPO / "src" / "largebatch",
        src / "src" / "largebatch",
        ignore=shutil.ignore_patterns("__pycache__", "configs"),
    )
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*cmd, "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1:]}")
    (wheel,) = (tmp_path / "dist").glob("largebatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"largebatch/configs/{p.relative_to(REPO / 'configs').as_posix()}"
        for p in (REPO / "configs").rglob("*.yaml")
    }
    assert expected and expected <= names
    assert "largebatch/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_clean_on_the_public_api():
    done = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
