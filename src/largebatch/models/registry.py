"""The model registry: a dict of frozen records, one per architecture.

Each entry builds an ``nn.Module`` from the model config, the shape of one input example and the
number of classes. A contract test runs over every entry (forward shape, parameter count where a
reference exists, one SGD step lowers the loss).

The registry owns the model names and what data each model fits: :func:`check_model_name` and
:func:`check_model_fits` raise :class:`ConfigError` naming the valid choices (the config module
does not import the registry, so that no import cycle runs through it).
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from largebatch.config import ConfigError, ModelConfig

Builder = Callable[..., nn.Module]
"""``build(cfg, input_shape, num_classes, **args) -> nn.Module``: ``cfg`` the ``model`` section,
``input_shape`` one example's shape, ``args`` the model's own keyword arguments
(``model.args``, see :func:`check_model_args`); the built-in models take none."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    """One line: what it is and what it is for."""
    build: Builder
    input_kind: str
    """What inputs it takes: 'vector' (any example, flattened), 'sequence' (a 1-D signal,
    ``(L,)`` or ``(1, L)``), 'image' (``(C, H, W)``)."""
    reference_params: int | None = None
    """Parameter count of the reference implementation at ``reference_classes`` classes."""
    reference_classes: int | None = None


MODELS: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> ModelInfo:
    if info.name in MODELS:
        raise ValueError(f"model '{info.name}' is registered twice")
    MODELS[info.name] = info
    return info


INPUT_KINDS = ("vector", "sequence", "image")


def check_model_name(name: str) -> ModelInfo:
    """The registry entry of ``name``; :class:`ConfigError` naming the valid names if none."""
    if name not in MODELS:
        raise ConfigError(
            f"model.name: '{name}' is not one of: {', '.join(sorted(MODELS))} (a plugin's name? "
            "install the plugin, or name its module in train.plugins)"
        )
    return MODELS[name]


def input_kind_of(input_shape: tuple[int, ...]) -> str:
    """'sequence' for ``(L,)`` or ``(1, L)``, 'image' for ``(C, H, W)``, else 'vector'."""
    shape = tuple(input_shape)
    if len(shape) == 1 or (len(shape) == 2 and shape[0] == 1):
        return "sequence"
    if len(shape) == 3:
        return "image"
    return "vector"


def fits(info: ModelInfo, data_kind: str) -> bool:
    """Whether a model takes examples of ``data_kind`` ('vector' models flatten anything)."""
    return info.input_kind == "vector" or info.input_kind == data_kind


def models_for(data_kind: str) -> list[str]:
    """Names of the registered models that take examples of ``data_kind``, sorted."""
    return sorted(name for name, info in MODELS.items() if fits(info, data_kind))


def check_model_fits(
    name: str, input_shape: tuple[int, ...] | str, dataset: str | None = None
) -> None:
    """Raise :class:`ConfigError` if model ``name`` cannot take the data, naming those that can.

    Args:
        name: ``model.name``.
        input_shape: the shape of one example (``DatasetBundle.input_shape``, e.g. ``(40,)`` or
            ``(1, 28, 28)``), or the data's kind, 'sequence' or 'image'
            (``DatasetInfo.input_kind``), to check before the dataset is built.
        dataset: ``data.name``, for the message.

    Example:

    >>> check_model_fits("cnn1d", (40,))
    >>> check_model_fits("cnn2d", "sequence", "mnist1d")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    largebatch.config.ConfigError: model.name=cnn2d takes images ... fit: cnn1d, mlp
    """
    info = check_model_name(name)
    if isinstance(input_shape, str):
        if input_shape not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {input_shape!r}")
        kind, shown = input_shape, _KIND_WORDS[input_shape]
    else:
        kind = input_kind_of(input_shape)
        shown = f"{_KIND_WORDS[kind]} of shape {tuple(input_shape)}"
    if fits(info, kind):
        return
    where = f"data.name={dataset}" if dataset else "the data"
    raise ConfigError(
        f"model.name={name} takes {_KIND_WORDS[info.input_kind]}, but {where} gives {shown}; "
        f"models that fit: {', '.join(models_for(kind))}"
    )


_KIND_WORDS = {
    "vector": "vectors",
    "sequence": "1-D sequences",
    "image": "images (C, H, W)",
}


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build ``cfg.name`` for examples of ``input_shape``; :class:`ConfigError` if the name is
    unknown, the model does not take such examples or ``cfg.args`` does not fit its builder."""
    check_model_fits(cfg.name, tuple(input_shape))
    args = check_model_args(cfg)
    return MODELS[cfg.name].build(cfg, tuple(input_shape), num_classes, **args)


# ----------------------------------------------------------------------------------------------
# A model's own arguments (model.args)


def model_arguments(info: ModelInfo) -> dict[str, inspect.Parameter]:
    """The builder's own arguments: its named parameters after ``(cfg, input_shape,
    num_classes)``; a ``**kwargs`` parameter is listed too (it takes any name)."""
    params = list(inspect.signature(info.build).parameters.values())[3:]
    return {p.name: p for p in params if p.kind not in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL)}


def check_model_args(cfg: ModelConfig) -> dict[str, Any]:
    """``model.args`` checked against the builder's signature; returns them with the builder's
    plain defaults (numbers, strings, lists) filled in, as ``config.yaml`` records them.

    An unknown name, a missing required one or a value of the wrong type (where the parameter
    is annotated) raises :class:`ConfigError` naming what the model accepts.

    Example:

    >>> check_model_args(ModelConfig(name="mlp"))
    {}
    >>> try:
    ...     check_model_args(ModelConfig(name="mlp", args={"depth": 3}))
    ... except ConfigError as e:
    ...     print(str(e)[:40])
    model.args: model mlp takes no arguments
    """
    info = check_model_name(cfg.name)
    params = model_arguments(info)
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind != p.VAR_KEYWORD}
    hints = _hints(info.build)
    for key in cfg.args:
        if key not in named and not open_ended:
            if not named:
                raise ConfigError(
                    f"model.args: model {cfg.name} takes no arguments (its settings are the "
                    f"model.* keys: see the README's configuration keys); remove model.args.{key}"
                )
            raise ConfigError(
                f"model.args.{key}: model {cfg.name} has no argument '{key}'; it takes: "
                + ", ".join(_describe(p, hints.get(n)) for n, p in named.items())
            )
    out: dict[str, Any] = {}
    for name, p in named.items():
        if name in cfg.args:
            out[name] = _check_type(cfg.args[name], hints.get(name), f"model.args.{name}")
        elif p.default is p.empty:
            raise ConfigError(
                f"model.args.{name}: model {cfg.name} needs it ({_describe(p, hints.get(name))});"
                f" set e.g. model.args.{name}=VALUE"
            )
        elif _plain(p.default):
            out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out | {k: v for k, v in cfg.args.items() if k not in named}


def _hints(build: Builder) -> dict[str, Any]:
    try:
        return typing.get_type_hints(build)
    except Exception:  # an annotation that does not resolve: no type checks
        return {}


def _plain(value: Any) -> bool:
    """A default ``config.yaml`` can record: None, a number, a string, or a list of them."""
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _describe(param: inspect.Parameter, tp: Any) -> str:
    kind = f" ({_type_name(tp)}" if tp is not None else " ("
    default = "required" if param.default is param.empty else f"default {param.default!r}"
    return f"{param.name}{kind}{', ' if tp is not None else ''}{default})"


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """``value`` if it is of the annotation ``tp`` (ints widen to floats); unannotated or
    unusual annotations are not checked."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}), got {value!r}")
        args = typing.get_args(tp)
        if origin is list and args:
            return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return list(value)
    if tp is type(None):
        ok = value is None
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        value = float(value) if ok else value
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp in (bool, str, dict):
        ok = isinstance(value, tp)
    else:
        return value  # Any, unannotated, or a type a YAML value cannot be: not checked
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value
