"""The sweep spec: a base config, a grid and/or override sets, and seeds; checked whole.

A sweep spec is a YAML file::

    name: demo                      # optional; default: the file's stem
    base: ../mnist1d_cnn.yaml       # the base config; relative paths are relative to the spec
    overrides: {train.epochs: 30}   # optional: applied to every run
    grid:                           # optional: every combination of these values ...
      train.global_batch_size: [32, 512]
    runs:                           # ... and/or a list of override sets (a label is optional);
      - {label: "no noise"}         # with both, every grid point is combined with every entry
      - {label: "noise 1e-5", noise.alpha: 1e-5}
    seeds: 3                        # N (seeds 0..N-1) or a list of integers
    seed_keys: [train.seed]         # the config keys that receive the seed (default: train.seed)
    quick: {seeds: 1, overrides: {train.epochs: 3}}   # the smoke form: fewer seeds/epochs
    analyze: ["hessian --top-k 1"]  # optional: `largebatch analyze ...` on every finished run
    interpolate: ["B=32", "B=1024"] # optional: the parametric plot between two settings' runs
                                    # of each seed, in SWEEP/interpolate/seed=S/

:func:`load_spec` checks the spec whole before anything runs: unknown keys, a missing base config,
an empty grid, seeds that are not integers and every run's config (through the config loader)
raise :class:`~largebatch.errors.UserError`. A run's name is made of the overrides that vary
between settings and its seed (``global_batch_size=512,alpha=1e-05,seed=0``).
"""

from __future__ import annotations

import itertools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largebatch.config import normalise_yaml_floats, read_user_yaml
from largebatch.errors import UserError

SPEC_KEYS = (
    "name",
    "description",
    "base",
    "overrides",
    "grid",
    "runs",
    "seeds",
    "seed_keys",
    "quick",
    "analyze",
    "interpolate",
)
QUICK_KEYS = ("seeds", "overrides")
ANALYSES = ("hessian", "sharpness", "surface", "noise-scale")
MANIFEST = "sweep.json"


@dataclass(frozen=True)
class PlannedRun:
    name: str
    setting: str
    """The run's name without its seed: the runs of one setting differ only in seeds."""
    label: str
    seed: int
    overrides: tuple[str, ...]
    """``KEY=VALUE`` strings, as ``largebatch train`` takes them."""


@dataclass
class SweepSpec:
    path: Path
    name: str
    base: Path
    runs: list[PlannedRun]
    analyze: list[list[str]] = field(default_factory=list)
    quick: bool = False
    interpolate: tuple[str, str] | None = None
    """Labels of two settings: the parametric plot between their runs of each seed."""


def format_value(value: Any) -> str:
    """A spec value as ``largebatch train`` parses it back (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _name_value(value: Any) -> str:
    if isinstance(value, list):
        text = "-".join(map(str, value))
    else:
        text = format(value, "g") if isinstance(value, float) else format_value(value)
    return "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)


def _mapping(spec: Path, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and "." in k for k in value):
        raise UserError(
            f"{spec}: '{key}' must map dotted config keys to values, e.g. train.epochs: 5"
        )
    return dict(value)


def _seeds(spec: Path, key: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UserError(f"{spec}: '{key}' must be at least 1, got {value}")
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    ):
        if len(set(value)) != len(value):
            raise UserError(f"{spec}: '{key}' lists a seed twice: {value}")
        return list(value)
    raise UserError(f"{spec}: '{key}' must be a count or a list of integers, got {value!r}")


def read_spec_file(
    path: Path, what: str, presets: str, keys: tuple[str, ...], needs: str
) -> dict[str, Any]:
    """A spec file's top-level mapping (YAML floats as numbers), its keys checked against
    ``keys``; every problem is one :class:`UserError` naming the file."""
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist (presets are in {presets})")
    raw = read_user_yaml(path, what)
    if not isinstance(raw, dict):
        raise UserError(f"{what} '{path}' must be a mapping with {needs}")
    raw = normalise_yaml_floats(raw)
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}'; valid keys: {', '.join(keys)}")
    return raw


def load_spec(
    path: str | Path,
    quick: bool = False,
    seeds: int | list[int] | None = None,
    overrides: list[str] | None = None,
) -> SweepSpec:
    """Read and check a sweep spec whole; every run's config is validated, nothing is run.

    Args:
        path: the YAML spec.
        quick: use the spec's ``quick`` form (its seeds and overrides on top of the full ones).
        seeds: replaces the spec's seeds (a count or a list).
        overrides: ``KEY=VALUE`` strings applied to every run, last (e.g. ``data.root=DIR``).
    """
    path = Path(path)
    raw = read_spec_file(path, "sweep spec", "configs/sweeps/", SPEC_KEYS, "at least 'base'")
    if "base" not in raw or not isinstance(raw["base"], str):
        raise UserError(f"{path}: 'base' must name a config file, e.g. base: ../mnist1d_cnn.yaml")
    base = Path(raw["base"])
    if not base.is_absolute():
        base = (path.parent / base).resolve()
    if not base.is_file():
        raise UserError(f"{path}: base config '{raw['base']}' does not exist (looked at {base})")

    common = _mapping(path, "overrides", raw.get("overrides"))
    grid = raw.get("grid")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise UserError(f"{path}: 'grid' is empty; give it keys with lists of values")
        grid = _mapping(path, "grid", grid)
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"{path}: grid key '{key}' must have a non-empty list of values")
    entries = raw.get("runs")
    if entries is not None:
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{path}: 'runs' must be a non-empty list of override sets")
        entries = [
            {"label": e.get("label")}
            | _mapping(path, "runs", {k: v for k, v in e.items() if k != "label"})
            if isinstance(e, dict)
            else _mapping(path, "runs", e)
            for e in entries
        ]
    seed_list = _seeds(path, "seeds", raw.get("seeds", 1))
    seed_keys = raw.get("seed_keys", ["train.seed"])
    if not isinstance(seed_keys, list) or not all(isinstance(k, str) for k in seed_keys):
        raise UserError(f"{path}: 'seed_keys' must be a list of dotted keys, e.g. [train.seed]")
    quick_raw = raw.get("quick") or {}
    if not isinstance(quick_raw, dict):
        raise UserError(f"{path}: 'quick' must be a mapping with seeds and/or overrides")
    bad = sorted(set(quick_raw) - set(QUICK_KEYS))
    if bad:
        raise UserError(f"{path}: unknown key 'quick.{bad[0]}'; valid: {', '.join(QUICK_KEYS)}")
    if quick:
        if "seeds" in quick_raw:
            seed_list = _seeds(path, "quick.seeds", quick_raw["seeds"])
        common |= _mapping(path, "quick.overrides", quick_raw.get("overrides"))
    if seeds is not None:
        seed_list = _seeds(path, "--seeds", seeds)
    from largebatch.config import load_config, parse_override

    for text in overrides or []:
        section, key, value = parse_override(text)
        common[f"{section}.{key}"] = value
    analyze = _analyses(path, raw.get("analyze"))

    # Settings: the grid's product, each combined with every entry of 'runs'.
    grid_points = (
        [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())]
        if grid
        else [{}]
    )
    sets = [
        (g | {k: v for k, v in e.items() if k != "label"}, e.get("label"))
        for g in grid_points
        for e in (entries or [{}])
    ]
    varying = list(dict.fromkeys(k for s, _ in sets for k in s))  # first seen first
    short = {k: k.rsplit(".", 1)[1] for k in varying}
    if len(set(short.values())) < len(short):
        short = {k: k for k in varying}

    base_overrides = [f"{k}={format_value(v)}" for k, v in common.items()]
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    labelled: dict[str, str] = {}  # label -> the setting it names
    for setting, label in sets:
        named = {k: f"{short[k]}={_name_value(setting[k])}" for k in varying if k in setting}
        parts = list(named.values())
        setting_name = ",".join(parts) or "base"
        if setting_name in seen:
            raise UserError(f"{path}: two settings have the same overrides ({setting_name})")
        seen.add(setting_name)
        grid_parts = [p for k, p in named.items() if grid and k in grid]
        if label and grid_parts:
            label = ", ".join([*grid_parts, label])  # a label is per entry, not per grid point
        label = label or ", ".join(parts) or "base"
        if label in labelled:
            raise UserError(
                f"{path}: two settings have the same label '{label}' ({labelled[label]} and "
                f"{setting_name}), so the report could select neither; give each a distinct label"
            )
        labelled[label] = setting_name
        overrides = base_overrides + [f"{k}={format_value(v)}" for k, v in setting.items()]
        for seed in seed_list:
            run_overrides = overrides + [f"{k}={seed}" for k in seed_keys]
            try:
                load_config(base, run_overrides)
            except UserError as e:
                raise UserError(f"{path}: setting {setting_name}: {e}") from None
            name = f"{setting_name},seed={seed}" if setting_name != "base" else f"seed={seed}"
            runs.append(PlannedRun(name, setting_name, label, seed, tuple(run_overrides)))
    name = raw.get("name") or path.stem
    pair = _interpolate(path, raw.get("interpolate"), [r.label for r in runs])
    return SweepSpec(path, str(name), base, runs, analyze, quick, pair)


def _interpolate(path: Path, value: Any, labels: list[str]) -> tuple[str, str] | None:
    """``interpolate: [LABEL_A, LABEL_B]``: two settings' labels (as the report shows them)."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise UserError(
            f'{path}: \'interpolate\' must be two setting labels, e.g. ["B=32", "B=512"]'
        )
    for v in value:
        if v not in labels:
            known = ", ".join(dict.fromkeys(labels))
            raise UserError(f"{path}: interpolate: no setting labelled '{v}'; settings: {known}")
    return value[0], value[1]


def _analyses(path: Path, value: Any) -> list[list[str]]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.split() for v in value):
        raise UserError(f"{path}: 'analyze' must be a list of commands, e.g. ['hessian --top-k 1']")
    out = []
    for v in value:
        words = shlex.split(v)
        if words[0] not in ANALYSES:
            raise UserError(
                f"{path}: analyze '{words[0]}' is not one of: {', '.join(ANALYSES)} "
                "(interpolate takes two runs: run it by hand)"
            )
        out.append(words)
    return out
