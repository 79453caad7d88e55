"""configs/caltech101_smoke.yaml end to end through the engine, on a generated Caltech tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from largebatch.config import load_config
from largebatch.engine import train
from tests.data.imagegen import make_caltech_tree, pack_official

PRESET = Path(__file__).resolve().parents[2] / "configs" / "caltech101_smoke.yaml"


@pytest.mark.slow
def test_smoke_preset_trains_one_epoch(tmp_path):
    tree = make_caltech_tree(tmp_path / "tree", per_class=12)
    pack_official(tree, tmp_path / "data")  # the official zip, as a user would have it
    overrides = [
        f"data.root={tmp_path / 'data'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.device=cpu",
        "train.progress=false",
    ]
    cfg = load_config(PRESET, overrides)
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    run = tmp_path / "run"
    info = json.loads((run / "data.json").read_text())
    assert info["num_classes"] == 5 and info["num_train"] + info["num_val"] == 60
    assert len(info["manifest_sha256"]) == 64
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0.0 <= rows[0]["val_acc"] <= 1.0


@pytest.mark.slow
def test_smoke_preset_from_the_command_line(tmp_path):
    tree = make_caltech_tree(tmp_path / "tree", classes=("a", "b"), per_class=12)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "largebatch", "train", str(PRESET),
        f"data.root={tree.parent}", f"data.cache_dir={tmp_path / 'cache'}",
        "train.device=cpu", "train.progress=false", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "summary.json").is_file()
    # Missing data is a user error: exit code 2 and a message saying how to get it.
    # HOME and LARGEBATCH_DATA point nowhere, so no real copy of the data can be found either.
    cmd[5] = f"data.root={tmp_path / 'nowhere'}"
    cmd[-1] = str(tmp_path / "run2")
    env = {k: v for k, v in os.environ.items() if k != "LARGEBATCH_DATA"}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "largebatch download caltech101" in proc.stderr
