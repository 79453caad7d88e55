"""The model registry: a dict of frozen records, one per architecture.

Each entry builds an ``nn.Module`` from the model config, the shape of one input example and the
number of classes. A contract test runs over every entry (forward shape, parameter count where a
reference exists, one SGD step lowers the loss).

The registry owns the model names and what data each model fits: :func:`check_model_name` and
:func:`check_model_fits` raise :class:`ConfigError` naming the valid choices (the config module
does not import the registry, so that no import cycle runs through it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from largebatch.config import ConfigError, ModelConfig

Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]


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
        raise ConfigError(f"model.name: '{name}' is not one of: {', '.join(sorted(MODELS))}")
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
    unknown or the model does not take such examples."""
    check_model_fits(cfg.name, tuple(input_shape))
    return MODELS[cfg.name].build(cfg, tuple(input_shape), num_classes)
