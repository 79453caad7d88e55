"""Plugins: your own models, datasets and losses, honoured by every command and child process.

Two ways in, both loaded before a config's names are checked:

1. **Entry points** of an installed package, group :data:`ENTRY_POINT_GROUP`
   (``largebatch.plugins``), in its ``pyproject.toml``::

       [project.entry-points."largebatch.plugins"]
       toy = "lb_toy_plugin:register"

   Every ``largebatch`` command loads them, once per process (so do :func:`largebatch.engine.
   train` and :func:`largebatch.analysis.runs.load_run` called from Python).
2. **The config key** ``train.plugins: [module, ...]``: imported by :func:`prepare_config`;
   recorded in the run's ``config.yaml``, so ``--resume``, ``largebatch analyze`` and the child
   processes of ``sweep``, ``compare`` and ``demo`` import the same modules. A module is looked
   for on ``sys.path`` (installed packages, ``PYTHONPATH``) and in the current working
   directory; children get the parent's ``PYTHONPATH``, the folders the parent imported the
   plugins from and its working directory (:func:`child_env`).

An entry (an entry point's value, or a ``train.plugins`` string) is ``module`` (imported; it
registers at import time) or ``module:function`` (imported, then ``function()`` called once per
process). A plugin registers with the registries' ``register`` functions, re-exported here::

    from largebatch.plugins import ModelInfo, register_model
    register_model(ModelInfo("toy_mlp", "a ReLU MLP", build=build, input_kind="vector"))

A plugin that cannot be imported or fails to register raises one :class:`UserError` naming it
and the fix (exit code 2 from the command line, no traceback).

Example:

>>> from largebatch.config import Config
>>> cfg = prepare_config(Config())  # entry points, train.plugins, then every name checked
>>> cfg.model.name, cfg.model.args, origin("model", "mlp") is None
('mlp', {}, True)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from largebatch.config import Config
from largebatch.data import DATASETS, check_dataset_name
from largebatch.data.registry import DatasetInfo
from largebatch.data.registry import register as register_dataset
from largebatch.errors import UserError
from largebatch.losses import LOSSES, LossInfo, check_loss_name
from largebatch.losses import register as register_loss
from largebatch.models import MODELS
from largebatch.models.registry import ModelInfo, check_model_args, check_model_fits
from largebatch.models.registry import register as register_model

__all__ = [
    "ENTRY_POINT_GROUP",
    "DatasetInfo",
    "LossInfo",
    "ModelInfo",
    "child_env",
    "load_plugins",
    "origin",
    "prepare_config",
    "register_dataset",
    "register_loss",
    "register_model",
]

ENTRY_POINT_GROUP = "largebatch.plugins"
_STATE: dict[str, Any] = {"entry_points": False, "called": set(), "roots": [], "origins": {}}


def _names() -> set[tuple[str, str]]:
    return {
        *(("model", n) for n in MODELS),
        *(("dataset", n) for n in DATASETS),
        *(("loss", n) for n in LOSSES),
    }


def origin(kind: str, name: str) -> str | None:
    """The plugin that registered ``name`` (``kind``: model, dataset or loss); None: built in."""
    return _STATE["origins"].get((kind, name))


def _register(obj: Any, key: str, where: str) -> None:
    """Call a plugin's ``register()`` once per process (``key``: ``module:function``)."""
    if not inspect.ismodule(obj) and key not in _STATE["called"]:
        if not callable(obj):
            raise UserError(f"{where}: '{key}' is neither a module nor a function to call")
        _STATE["called"].add(key)
        obj()


def _run(entry: str, where: str, load: Any, fix: str) -> None:
    """``load()`` a plugin and register it; a failure becomes one :class:`UserError`."""
    before = _names()
    try:
        _register(load(), entry, where)
    except UserError:
        raise
    except ValueError as e:  # a name registered twice
        raise UserError(f"{where}: {e}; rename it, or leave out one of the plugins") from None
    except Exception as e:
        detail = " ".join(str(e).split())  # one line
        raise UserError(f"{where} failed: {type(e).__name__}: {detail}; {fix}") from None
    for added in _names() - before:
        _STATE["origins"][added] = entry.split(":")[0].split(".")[0]


def load_entry_points() -> None:
    """Load every ``largebatch.plugins`` entry point of the installed packages (once)."""
    if _STATE["entry_points"]:
        return
    _STATE["entry_points"] = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = f"{dist.name} {dist.version}" if dist is not None else "a package"
        where = f"plugin entry point '{ep.name} = {ep.value}' of {package}"
        fix = f"fix it, or pip uninstall {dist.name if dist is not None else 'the package'}"
        _run(ep.value, where, ep.load, fix)


def _import(entry: str) -> Any:
    module_name, _, attr = entry.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # a local module, as `python -m` would find it
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name + ".").startswith(e.name + "."):
            raise  # a module the plugin itself imports
        raise UserError(
            f"train.plugins: cannot import '{module_name}' (no module named '{e.name}'); install "
            "it, or add the folder that holds it to PYTHONPATH (or run from that folder)"
        ) from None
    _remember_root(module_name)
    if not attr:
        return module
    if not hasattr(module, attr):
        raise UserError(f"train.plugins: module '{module_name}' has no '{attr}' to call")
    return getattr(module, attr)


def _remember_root(module_name: str) -> None:
    """The folder the plugin's top-level package came from, for :func:`child_env`."""
    top = sys.modules.get(module_name.split(".")[0])
    path = getattr(top, "__file__", None)
    if path:
        root = Path(path).resolve().parent
        root = root.parent if Path(path).name == "__init__.py" else root
        if str(root) not in _STATE["roots"]:
            _STATE["roots"].append(str(root))


def load_plugins(modules: Iterable[str] = ()) -> None:
    """The entry points (once), then each ``train.plugins`` entry (imported once; a
    ``module:function`` called once)."""
    load_entry_points()
    for entry in modules:
        fix = "fix the module, or remove it from train.plugins"
        _run(entry, f"train.plugins: plugin '{entry}'", lambda e=entry: _import(e), fix)


def prepare_config(cfg: Config) -> Config:
    """Load ``cfg``'s plugins, then check its names against the registries (dataset, model,
    whether the model takes the data, ``model.args``, ``train.loss``); return ``cfg`` with the
    model's arguments resolved (the builder's defaults filled in, as ``config.yaml`` records
    them). Raises :class:`~largebatch.config.ConfigError` naming the key and the choices."""
    load_plugins(cfg.train.plugins)
    info = check_dataset_name(cfg.data.name)
    check_model_fits(cfg.model.name, info.input_kind, cfg.data.name)
    args = check_model_args(cfg.model)
    check_loss_name(cfg.train.loss)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, args=args))


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a ``python -m largebatch`` child: ``PYTHONPATH``
    made absolute, plus the folders this process imported ``train.plugins`` from and the
    working directory, so the child imports the same plugin modules."""
    env = dict(os.environ if env is None else env)
    given = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = list(dict.fromkeys([*given, *_STATE["roots"], os.getcwd()]))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
