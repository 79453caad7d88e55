"""The comparison protocol's spec: the setting, the two batches, the seeds of each stage and the
candidates; checked whole before anything runs.

A spec is a YAML file::

    name: compare_demo                 # optional; default: the file's stem
    base: ../mnist1d_cnn.yaml          # the base config (relative to the spec)
    overrides: {train.progress: false} # applied to every run
    small: {train.global_batch_size: 32}
    large: {train.global_batch_size: 512}
    seed_keys: [train.seed, noise.seed]
    screen_seeds: 3                    # seeds 0..2: every candidate variant, and the diagnosis
    promote_seeds: 4                   # the next 4: the best `promote` candidates
    confirm_seeds: 10                  # the next 10: only the chosen fix (never used to choose)
    promote: 3
    families: auto                     # auto (the gap's kind) | regulariser | optimisation | all
    max_passes: 2                      # leave out candidates costlier than this per update
    max_time: 2.5                      # measured on the screen: time per epoch vs the large
                                       # batch; a variant over it is shown but never promoted
    candidates: [...]                  # optional: replaces the defaults (compare.candidates)
    quick: {screen_seeds: 1, promote_seeds: 1, confirm_seeds: 2, overrides: {train.epochs: 5}}

The stages' seeds are disjoint by construction: screen ``0 .. S-1``, promote ``S .. S+P-1``,
confirm ``S+P .. S+P+C-1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largebatch.compare.candidates import Candidate, candidate_from_dict
from largebatch.errors import UserError
from largebatch.experiments.spec import read_spec_file

SPEC_KEYS = (
    "name",
    "description",
    "base",
    "overrides",
    "small",
    "large",
    "seed_keys",
    "screen_seeds",
    "promote_seeds",
    "confirm_seeds",
    "promote",
    "families",
    "max_passes",
    "max_time",
    "candidates",
    "quick",
)
QUICK_KEYS = ("screen_seeds", "promote_seeds", "confirm_seeds", "promote", "overrides")
FAMILY_CHOICES = ("auto", "regulariser", "optimisation", "all")


@dataclass
class CompareSpec:
    path: Path
    name: str
    base: Path
    overrides: dict[str, Any]
    small: dict[str, Any]
    large: dict[str, Any]
    seed_keys: list[str]
    screen_seeds: list[int]
    promote_seeds: list[int]
    confirm_seeds: list[int]
    promote: int
    families: str
    max_passes: float
    max_time: float
    candidates: list[Candidate] | None = None
    """None: the defaults, resolved against the base config."""
    quick: bool = False
    extra: list[str] = field(default_factory=list)
    """``KEY=VALUE`` from the command line, applied last to every run."""


def _count(path: Path, key: str, value: Any, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{path}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _mapping(path: Path, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and "." in k for k in value):
        raise UserError(f"{path}: '{key}' must map dotted config keys to values")
    return dict(value)


def load_compare_spec(
    path: str | Path, quick: bool = False, overrides: list[str] | None = None
) -> CompareSpec:
    path = Path(path)
    raw = read_spec_file(
        path, "comparison spec", "configs/compare/", SPEC_KEYS, "base, small and large"
    )
    for key in ("base", "small", "large"):
        if key not in raw:
            raise UserError(f"{path}: '{key}' is missing (base config, small and large batch)")
    base = Path(str(raw["base"]))
    base = base if base.is_absolute() else (path.parent / base).resolve()
    if not base.is_file():
        raise UserError(f"{path}: base config '{raw['base']}' does not exist (looked at {base})")
    settings = dict(raw)
    quick_raw = raw.get("quick") or {}
    if not isinstance(quick_raw, dict) or set(quick_raw) - set(QUICK_KEYS):
        raise UserError(f"{path}: 'quick' may hold {', '.join(QUICK_KEYS)}")
    common = _mapping(path, "overrides", raw.get("overrides"))
    if quick:
        settings |= {k: v for k, v in quick_raw.items() if k != "overrides"}
        common |= _mapping(path, "quick.overrides", quick_raw.get("overrides"))
    screen = _count(path, "screen_seeds", settings.get("screen_seeds", 3))
    promote_n = _count(path, "promote_seeds", settings.get("promote_seeds", 4), minimum=0)
    confirm = _count(path, "confirm_seeds", settings.get("confirm_seeds", 10))
    families = settings.get("families", "auto")
    if families not in FAMILY_CHOICES:
        raise UserError(f"{path}: families must be one of {', '.join(FAMILY_CHOICES)}")
    max_passes = settings.get("max_passes", 2)
    if not isinstance(max_passes, int | float) or max_passes < 1:
        raise UserError(f"{path}: max_passes must be a number >= 1, got {max_passes!r}")
    max_time = settings.get("max_time", 2.5)
    if not isinstance(max_time, int | float) or max_time < 1:
        raise UserError(f"{path}: max_time must be a number >= 1, got {max_time!r}")
    seed_keys = settings.get("seed_keys", ["train.seed"])
    if not isinstance(seed_keys, list) or not all(isinstance(k, str) for k in seed_keys):
        raise UserError(f"{path}: 'seed_keys' must be a list of dotted keys, e.g. [train.seed]")
    candidates = None
    if raw.get("candidates") is not None:
        if not isinstance(raw["candidates"], list) or not raw["candidates"]:
            raise UserError(f"{path}: 'candidates' must be a non-empty list")
        candidates = [candidate_from_dict(c, str(path)) for c in raw["candidates"]]
        names = [c.name for c in candidates]
        if len(set(names)) != len(names):
            raise UserError(f"{path}: two candidates have the same name")
    return CompareSpec(
        path=path,
        name=str(raw.get("name") or path.stem),
        base=base,
        overrides=common,
        small=_mapping(path, "small", raw["small"]),
        large=_mapping(path, "large", raw["large"]),
        seed_keys=seed_keys,
        screen_seeds=list(range(screen)),
        promote_seeds=list(range(screen, screen + promote_n)),
        confirm_seeds=list(range(screen + promote_n, screen + promote_n + confirm)),
        promote=_count(path, "promote", settings.get("promote", 3)),
        families=families,
        max_passes=float(max_passes),
        max_time=float(max_time),
        candidates=candidates,
        quick=quick,
        extra=list(overrides or []),
    )
