"""Candidate fixes for a large batch's gap: each a name, a family, fixed overrides and a small
hyperparameter grid; and the default list the protocol starts from.

A candidate's *variants* are its grid points (one variant when it has no grid). The family says
what kind of gap it is for (:mod:`largebatch.compare.kind`): ``regulariser`` (a generalization
gap: SAM, m-SAM, Momentum-SAM, the penalty's finite-difference form, label smoothing, Ghost
BatchNorm) or ``optimisation`` (a fit gap: the learning rate, warmup, LARS, Nesterov momentum,
clipping, a milder Momentum-SAM). ``passes`` is the forward-backward passes per update relative
to a plain update (2 for SAM, m-SAM and the finite-difference penalty).

Values in the default grids are written against the base config: ``{small}`` stands for the
small batch, ``{lr}`` for the base learning rate, ``{epochs}`` for the run's epochs (``{small}*4``:
four times it). m-SAM's micro-batch is four small batches (smaller perturbation batches act more
like the small batch's noise but cost more passes of small batches); the penalty's is the small
batch itself, the size at which its lambda = lr_S is SGD's implicit regulariser.

Example::

    >>> from largebatch.compare.candidates import Candidate
    >>> c = Candidate("SAM", "regulariser", {"optim.sam": "sam"}, {"optim.sam_rho": [0.02, 0.05]})
    >>> [v.label for v in c.variants()]
    ['SAM rho=0.02', 'SAM rho=0.05']
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from largebatch.errors import UserError

FAMILIES = ("regulariser", "optimisation")


@dataclass(frozen=True)
class Variant:
    candidate: str
    label: str
    overrides: dict[str, Any]
    passes: float


@dataclass(frozen=True)
class Candidate:
    name: str
    family: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    passes: float = 1.0

    def variants(self) -> list[Variant]:
        if not self.grid:
            return [Variant(self.name, self.name, dict(self.overrides), self.passes)]
        out = []
        for values in itertools.product(*self.grid.values()):
            point = dict(zip(self.grid, values, strict=True))
            words = " ".join(
                f"{k.rsplit('.', 1)[1].replace('sam_', '')}={v}" for k, v in point.items()
            )
            out.append(
                Variant(self.name, f"{self.name} {words}", self.overrides | point, self.passes)
            )
        return out


def _fill(value: Any, small: int, lr: float, epochs: int) -> Any:
    if isinstance(value, str) and value.startswith("{") and "}" in value:
        name, _, factor = value[1:].partition("}")
        base = {"small": small, "lr": lr, "epochs": epochs}.get(name)
        if base is None:
            raise UserError(f"'{value}': placeholders are {{small}}, {{lr}}, {{epochs}}")
        result = base * float(factor.lstrip("*")) if factor else base
        return int(round(result)) if name == "small" else round(result, 6)
    return value


def resolve(candidate: Candidate, small: int, lr: float, epochs: int) -> Candidate:
    """``candidate`` with its placeholders (``{small}``, ``{lr}*2``, ``{epochs}*0.1``) filled."""
    return Candidate(
        candidate.name,
        candidate.family,
        {k: _fill(v, small, lr, epochs) for k, v in candidate.overrides.items()},
        {k: [_fill(v, small, lr, epochs) for v in vs] for k, vs in candidate.grid.items()},
        candidate.passes,
    )


def default_candidates(batchnorm: bool) -> list[Candidate]:
    """The default list: every candidate at most 2 passes per update (equal epochs)."""
    out = [
        Candidate(
            "SAM",
            "regulariser",
            {"optim.sam": "sam"},
            {"optim.sam_rho": [0.02, 0.05, 0.1]},
            passes=2,
        ),
        Candidate(
            "m-SAM",
            "regulariser",
            {"optim.sam": "msam", "train.micro_batch_size": "{small}*4"},
            {"optim.sam_rho": [0.01, 0.02, 0.05]},
            passes=2,
        ),
        Candidate(
            "Momentum-SAM",
            "regulariser",
            {"optim.sam": "momentum"},
            {"optim.sam_rho": [0.1, 0.3, 1.0]},
        ),
        Candidate(
            "penalty (finite difference)",
            "regulariser",
            {"optim.grad_penalty_form": "finite_difference", "train.micro_batch_size": "{small}"},
            {"optim.grad_penalty": [0.005, 0.01, 0.02]},
            passes=2,
        ),
        Candidate(
            "label smoothing", "regulariser", {}, {"train.label_smoothing": [0.05, 0.1, 0.2]}
        ),
        Candidate(
            "warmup", "optimisation", {}, {"optim.warmup_epochs": ["{epochs}*0.1", "{epochs}*0.2"]}
        ),
        Candidate("LR", "optimisation", {}, {"optim.lr": ["{lr}*0.5", "{lr}*2"]}),
        Candidate(
            "LARS + warmup",
            "optimisation",
            {"optim.name": "lars", "optim.warmup_epochs": "{epochs}*0.1"},
            {"optim.trust_coefficient": [0.01, 0.05]},
        ),
        Candidate("Nesterov", "optimisation", {"optim.nesterov": True}),
        Candidate("clipping", "optimisation", {}, {"optim.grad_clip_norm": [1.0, 5.0]}),
        Candidate(
            "Momentum-SAM (mild)",
            "optimisation",
            {"optim.sam": "momentum"},
            {"optim.sam_rho": [0.03, 0.1]},
        ),
    ]
    if batchnorm:
        out.insert(5, Candidate("Ghost BN", "regulariser", {}, {"model.ghost_batch_size": [8, 16]}))
    return out


def candidate_from_dict(entry: Any, where: str) -> Candidate:
    """A candidate from a spec entry ``{name, family, overrides, grid, passes}``."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise UserError(f"{where}: a candidate is a mapping with at least 'name' and 'family'")
    unknown = sorted(set(entry) - {"name", "family", "overrides", "grid", "passes"})
    if unknown:
        raise UserError(
            f"{where}: unknown key '{unknown[0]}' in candidate '{entry['name']}'; "
            "valid: name, family, overrides, grid, passes"
        )
    family = entry.get("family")
    if family not in FAMILIES:
        raise UserError(
            f"{where}: candidate '{entry['name']}': family must be one of {', '.join(FAMILIES)}"
        )
    overrides = entry.get("overrides") or {}
    grid = entry.get("grid") or {}
    if not isinstance(overrides, dict) or not isinstance(grid, dict):
        raise UserError(f"{where}: candidate '{entry['name']}': overrides and grid are mappings")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(
                f"{where}: candidate '{entry['name']}': grid key '{key}' needs a list of values"
            )
    passes = entry.get("passes", 1)
    if not isinstance(passes, int | float) or passes <= 0:
        raise UserError(f"{where}: candidate '{entry['name']}': passes must be a number > 0")
    return Candidate(str(entry["name"]), family, dict(overrides), dict(grid), float(passes))
