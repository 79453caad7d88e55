"""A :class:`~largebatch.config.sections.Config` from YAML and ``KEY=VALUE`` overrides, every
value's type checked against its section's field, then validated.

    >>> cfg = load_config(None, ["train.global_batch_size=1024"])
    >>> cfg.train.global_batch_size
    1024
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from largebatch.config.checks import validate
from largebatch.config.sections import SECTIONS, Config, ConfigError
from largebatch.config.yaml_io import YamlTooLarge, load_yaml_text, read_user_yaml

# ----------------------------------------------------------------------------------------------
# Building from plain dicts, with types checked


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats).

    NaN and infinities are refused wherever they appear: a ``nan`` learning rate or noise
    variance would otherwise pass every range check (comparisons with NaN are all false).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
            raise ConfigError(f"{key}: expected a mapping of names to values, got {value!r}")
        return {k: _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported annotation {tp!r} for {key}")


def _section_from_dict(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            hint = ""
            if section == "model":  # a plugin model's own argument, given at the wrong level
                hint = f"; a plugin model's own arguments go under model.args: model.args.{key}="
                hint += str(value)
            raise ConfigError(
                f"unknown key '{section}.{key}'; valid keys in '{section}': {', '.join(names)}"
                + hint
            )
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from nested dicts, checking every key and type (not ranges)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(SECTIONS)})")
    sections = {}
    hints = typing.get_type_hints(Config)
    for name, values in raw.items():
        if name not in hints:
            raise ConfigError(f"unknown section '{name}'; valid sections: {', '.join(SECTIONS)}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"section '{name}' must be a mapping of keys, got {values!r}")
        sections[name] = _section_from_dict(hints[name], values, name)
    return Config(**sections)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``'train.global_batch_size=1024'`` -> ``('train', 'global_batch_size', 1024)``.

    The value is parsed as YAML, so ``[256,256]``, ``true``, ``null`` and ``1e-5`` work. A key
    that holds a mapping (:data:`MAPPING_KEYS`) takes one more part: ``'model.args.depth=3'`` ->
    ``('model', 'args.depth', 3)``.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    dotted, raw_value = text.split("=", 1)
    parts = dotted.strip().split(".")
    nested = len(parts) == 3 and ".".join(parts[:2]) in MAPPING_KEYS
    if (len(parts) != 2 and not nested) or not all(parts):
        raise ConfigError(
            f"override key '{dotted}' must be section.key, section one of {', '.join(SECTIONS)}"
            f" (or {', '.join(f'{k}.NAME' for k in MAPPING_KEYS)})"
        )
    try:
        value = load_yaml_text(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value does not parse ({e})") from None
    except YamlTooLarge as e:
        raise ConfigError(
            f"override '{dotted.strip()}=...': value refused: {e}; give a plain value"
        ) from None
    # YAML 1.1 reads '1e-5' as a string; accept it as the number a user means.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return parts[0], ".".join(parts[1:]), value


MAPPING_KEYS = ("model.args",)
"""Keys whose value is a mapping; an override may set one entry: ``model.args.depth=3``."""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if "." in key:  # one entry of a mapping-valued key (MAPPING_KEYS)
            key, name = key.split(".", 1)
            held = raw.setdefault(section, {}).get(key)
            raw[section][key] = {**(held if isinstance(held, dict) else {}), name: value}
        else:
            raw.setdefault(section, {})[key] = value
    return raw


def _load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist (presets are in configs/)")
    raw = read_user_yaml(path, "config file", ConfigError)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    return raw or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    raw = _load_yaml(path) if path is not None else {}
    raw = normalise_yaml_floats(raw)
    cfg = config_from_dict(apply_overrides(raw, overrides or []))
    validate(cfg)
    return cfg


def normalise_yaml_floats(raw: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-5`` as a string; turn such strings into floats."""
    if isinstance(raw, dict):
        return {k: normalise_yaml_floats(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [normalise_yaml_floats(v) for v in raw]
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
