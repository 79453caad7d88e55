"""Plugins: a user's model, dataset and loss, honoured by every command and every child process.

``tests/plugins/site`` holds ``lb_toy_plugin`` (the README's example) and its ``.dist-info``:
with that folder on ``PYTHONPATH`` it is an installed package whose ``largebatch.plugins`` entry
point every command loads, with no wrapper script. ``tests/plugins/local/lb_local_plugin.py`` is
not installed: a config names it (``train.plugins``). Every run here is a real
``python -m largebatch`` process (tiny data, 1-2 epochs, one thread), so the plugins never enter
the test process's registries; the in-process tests register what they need and remove it.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import largebatch.plugins as plugins
from largebatch.cli import main
from largebatch.config import ConfigError, ModelConfig, TrainConfig, load_config
from largebatch.errors import UserError
from largebatch.losses import (
    LOSSES,
    LossInfo,
    cross_entropy,
    evaluation_loss,
    mean_loss,
    register,
    training_loss,
)
from largebatch.models.registry import MODELS, ModelInfo, check_model_args

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
SITE, LOCAL = PLUGINS / "site", PLUGINS / "local"
TOY = PLUGINS / "toy.yaml"
MNIST1D = ["data.num_samples=600", "train.epochs=1", "train.threads=1", "train.progress=false"]


def cli(*args: object, path: tuple[Path, ...] = (SITE,), cwd: Path | None = None, code: str = ""):
    """``python -m largebatch ARGS`` (or ``python -c CODE``) with ``PYTHONPATH`` = ``path``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, path)), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "largebatch"]
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------
# Real runs in subprocesses


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """lb_toy_plugin's model (model.args), data and loss: stopped after epoch 1, resumed."""
    run = tmp_path_factory.mktemp("toy") / "run"
    first = cli("train", TOY, "--out", run, "--stop-after", "1", cwd=run.parent)
    assert first.returncode == 0, first.stderr
    resumed = cli("train", TOY, "--out", run, "--resume", cwd=run.parent)
    assert resumed.returncode == 0, resumed.stderr
    return run


@pytest.mark.slow
def test_train_and_resume_with_the_installed_plugin_learn(toy_run):
    summary = read_json(toy_run / "summary.json")
    assert summary["status"] == "completed" and summary["final"]["epoch"] == 2
    assert summary["final"]["val_acc"] > 0.6  # 4 classes: chance is 0.25
    config = yaml.safe_load((toy_run / "config.yaml").read_text())
    assert config["model"] == {
        **config["model"],
        "name": "toy_mlp",
        "args": {"width": 32, "depth": 2},
    }
    assert config["train"]["loss"] == "toy_focal" and config["data"]["name"] == "toy_blobs"
    history = read_json(toy_run / "env.json").get("history", [])
    assert history, "the second process resumed the run"


@pytest.mark.slow
def test_analyze_a_plugin_run_with_its_loss(toy_run):
    done = cli(
        "analyze", "hessian", toy_run, "--top-k", "1", "--trace-probes", "2", "--samples", "128"
    )
    assert done.returncode == 0, done.stderr
    record = read_json(toy_run / "analysis" / "hessian.json")
    assert record["loss"] == "toy_focal"  # the run's loss, named in the record and its figures
    values = record["values"]
    assert len(values["eigenvalues"]) == 1 and values["trace"] is not None


@pytest.mark.slow
def test_sweep_children_see_entry_points_and_the_parents_plugin_folders(tmp_path):
    # The parent finds lb_local_plugin only by a sys.path entry of its own (as a wrapper script
    # would): the children get that folder on PYTHONPATH from the sweep (plugins.child_env).
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "base": str(TOY),
                "overrides": {"train.epochs": 1, "train.plugins": ["lb_local_plugin"]},
                "grid": {"model.args.depth": [1, 2]},
                "runs": [{"label": "hinge", "train.loss": "local_hinge"}],
                "seeds": 2,
            }
        )
    )
    out = tmp_path / "sweep"
    code = f"import sys; sys.path.insert(0, {str(LOCAL)!r}); from largebatch.cli import main; "
    code += "sys.exit(main(sys.argv[1:]))"
    done = cli("sweep", spec, "--workers", "1", "--out", out, code=code, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = read_json(out / "sweep.json")["runs"]
    assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
    config = yaml.safe_load((out / runs[0]["dir"] / "config.yaml").read_text())
    assert config["train"]["plugins"] == ["lb_local_plugin"]
    # the report (no plugin needed: it reads the records) tells the two depths apart
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "table.md").read_text()
    assert "depth=1" in table and "depth=2" in table


@pytest.mark.slow
def test_config_key_imports_a_module_on_pythonpath(tmp_path):
    base = ROOT / "configs" / "mnist1d_mlp.yaml"
    keys = ["train.plugins=[lb_local_plugin]", "train.loss=local_hinge", *MNIST1D]
    done = cli("train", base, *keys, "--out", tmp_path / "run", path=(LOCAL,), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["plugins"] == ["lb_local_plugin"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    # local_hinge has evaluate=False: val_loss is cross-entropy (about ln 10 at the start)
    assert 1.5 < metrics[-1]["val_loss"] < 3.0


ERRORS = [
    (["model.args.depth=three"], "model.args.depth: expected int, got 'three'"),
    (["model.args.height=3"], "model toy_mlp has no argument 'height'; it takes: width (int"),
    (["model.depth=3"], "model.args.depth=3"),
    (["train.plugins=[lb_missing_plugin]"], "cannot import 'lb_missing_plugin'"),
    (["train.loss=nope"], "train.loss: 'nope' is not one of: cross_entropy, toy_focal"),
    (["train.label_smoothing=0.1"], "does nothing with train.loss=toy_focal"),
]


@pytest.mark.slow
def test_mistakes_exit_2_with_one_error_line_and_list_shows_the_plugin(tmp_path):
    # One interpreter (started once) runs the CLI's main() for each case, as `python -m
    # largebatch` would, and `largebatch list` last.
    code = (
        "import contextlib, io, json, sys\nfrom largebatch.cli import main\nout = []\n"
        "for args in json.loads(sys.argv[1]):\n    err, std = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):\n"
        "        out.append([main(args), err.getvalue(), std.getvalue()])\n"
        "print(json.dumps(out))\n"
    )
    cases = [["train", str(TOY), *keys, "--out", str(tmp_path / "r")] for keys, _ in ERRORS]
    done = cli(json.dumps([*cases, ["list"]]), code=code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    *results, (listed_rc, _, listed) = json.loads(done.stdout)
    for (rc, err, _), (_, needle) in zip(results, ERRORS, strict=True):
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "error:" in lines[0], err
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "r").exists()
    assert listed_rc == 0
    assert re.search(r"toy_mlp .*\[plugin lb_toy_plugin; model.args: width, depth\]", listed)
    assert "toy_blobs" in listed and "toy_focal" in listed


# ----------------------------------------------------------------------------------------------
# In process: the pieces


def build_args_model(cfg, input_shape, num_classes, *, width: int = 8, rate: float | None = None):
    return torch.nn.Linear(input_shape[0], num_classes)


@pytest.fixture
def args_model():
    info = ModelInfo("args_model", "test", build_args_model, "vector")
    MODELS[info.name] = info
    yield info
    del MODELS[info.name]


def test_model_args_are_checked_against_the_builder(args_model):
    assert check_model_args(ModelConfig(name="args_model")) == {"width": 8, "rate": None}
    given = ModelConfig(name="args_model", args={"width": 3, "rate": 1})
    assert check_model_args(given) == {"width": 3, "rate": 1.0}
    for args, needle in (
        ({"depth": 2}, "has no argument 'depth'; it takes: width (int, default 8), rate"),
        ({"width": 2.5}, "model.args.width: expected int, got 2.5"),
        ({"rate": "fast"}, "model.args.rate: expected float | None"),
    ):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            check_model_args(ModelConfig(name="args_model", args=args))
    with pytest.raises(ConfigError, match="model mlp takes no arguments"):
        check_model_args(ModelConfig(name="mlp", args={"width": 3}))


def test_model_args_overrides_and_the_wrong_spelling():
    cfg = load_config(None, ["model.args.depth=3", "model.args.width=[4, 4]"])
    assert cfg.model.args == {"depth": 3, "width": [4, 4]}
    with pytest.raises(ConfigError, match=re.escape("go under model.args: model.args.depth=3")):
        load_config(None, ["model.depth=3"])
    with pytest.raises(ConfigError, match="must be section.key"):
        load_config(None, ["train.loss.x=3"])
    with pytest.raises(ConfigError, match="not a module path"):
        load_config(None, ["train.plugins=['my plugin']"])


@pytest.fixture
def squared_loss():
    def squared(logits, targets):
        return (logits.softmax(1) - torch.eye(logits.shape[1])[targets]).pow(2).sum(1)

    info = register(LossInfo("squared", "test", squared))
    yield info
    del LOSSES[info.name]


def test_which_loss_trains_evaluates_and_is_analysed(squared_loss):
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    smoothed = training_loss(TrainConfig(label_smoothing=0.1))(logits, y)
    torch.testing.assert_close(
        smoothed,
        torch.nn.functional.cross_entropy(logits, y, reduction="none", label_smoothing=0.1),
    )
    assert evaluation_loss(TrainConfig(label_smoothing=0.1)) is cross_entropy
    assert mean_loss(cross_entropy) is torch.nn.functional.cross_entropy
    plugin = TrainConfig(loss="squared")
    torch.testing.assert_close(training_loss(plugin)(logits, y), squared_loss.fn(logits, y))
    torch.testing.assert_close(evaluation_loss(plugin)(logits, y), squared_loss.fn(logits, y))
    torch.testing.assert_close(
        mean_loss(evaluation_loss(plugin))(logits, y), squared_loss.fn(logits, y).mean()
    )
    LOSSES["squared"] = LossInfo("squared", "test", squared_loss.fn, evaluate=False)
    assert evaluation_loss(plugin) is cross_entropy  # a training-only objective
    LOSSES["squared"] = LossInfo("squared", "test", lambda z, t: squared_loss.fn(z, t).mean())
    with pytest.raises(
        UserError, match=r"returned \(\) for a batch of 5: a loss returns one value"
    ):
        training_loss(plugin)(logits, y)
    with pytest.raises(ConfigError, match="does nothing with train.loss=squared"):
        load_config(None, ["train.loss=squared", "train.label_smoothing=0.1"])


def test_a_broken_entry_point_is_one_error_naming_it(monkeypatch):
    from importlib import metadata

    broken = metadata.EntryPoint("bad", "lb_no_such_module:register", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [broken])
    monkeypatch.setitem(plugins._STATE, "entry_points", False)
    with pytest.raises(UserError) as caught:
        plugins.load_entry_points()
    message = str(caught.value)
    assert "plugin entry point 'bad = lb_no_such_module:register'" in message
    assert "ModuleNotFoundError" in message and "\n" not in message


def test_child_env_carries_pythonpath_plugin_folders_and_cwd(monkeypatch, tmp_path):
    monkeypatch.setitem(plugins._STATE, "roots", [str(LOCAL)])
    monkeypatch.chdir(tmp_path)
    env = plugins.child_env({"PYTHONPATH": "relative/dir"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(tmp_path / "relative" / "dir"), str(LOCAL), str(tmp_path)]


@pytest.mark.parametrize(
    ("name", "attr"),
    [
        ("largebatch.losses", None),
        ("largebatch.plugins", None),
        ("largebatch.models.registry", "check_model_args"),
    ],
)
def test_docstring_examples_run(name, attr):
    module = importlib.import_module(name)
    obj = getattr(module, attr) if attr else module
    tests = doctest.DocTestFinder().find(obj, name, module=module, globs=vars(module).copy())
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


# ----------------------------------------------------------------------------------------------
# The README shows this package


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Your own model and data")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_example_is_the_test_plugin():
    section = readme_section()
    source = (SITE / "lb_toy_plugin" / "__init__.py").read_text()
    (python,) = re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)
    for line in python.splitlines():
        assert line.strip() == "..." or line in source, (
            f"README line not in lb_toy_plugin: {line!r}"
        )
    points = (SITE / "lb_toy_plugin-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert 'toy = "lb_toy_plugin:register"' in section and "toy = lb_toy_plugin:register" in points
    (config,) = re.findall(r"^```yaml\n(.*?)^```", section, flags=re.M | re.S)
    assert yaml.safe_load(config) == yaml.safe_load(TOY.read_text())
    for key in ("train.plugins", "train.loss", "model.args"):
        assert key in section
