"""``largebatch analyze``: diagnostics of a trained minimum, read from run directories.

    largebatch analyze hessian RUN [--top-k K] [--samples N] [--method lanczos|power]
                                   [--trace-probes P] [--density] [--seed S] [--bn-mode eval|train]
    largebatch analyze sharpness RUN [--epsilon E] [--subspace-dim P] [--max-iter M] [--samples N]
    largebatch analyze interpolate RUN_A RUN_B [--range -1:2:31] [--no-bn-recompute] [--out DIR]
    largebatch analyze surface RUN [--grid -1:1:21] [--dim 1|2] [--seed S]
    largebatch analyze noise-scale RUN [--samples N] [--seed S]

Every command takes ``--threads N``, torch's CPU threads (default: the run's ``train.threads``,
as ``train`` and ``bench`` use it; unset there: torch's default); a sweep passes its workers'
share of the cores. Each command writes ``<name>.json`` and ``<name>.png`` into
``RUN/analysis/`` and never trains (see :mod:`largebatch.analysis.commands`).
:func:`add_analyze_parser` hangs the commands under the main CLI's sub-parsers; each sets
``func``, and the main CLI runs ``args.func(args)``, printing a
:class:`largebatch.errors.UserError` and exiting with code 2 on a user mistake.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from largebatch.analysis.commands import (
    cmd_hessian,
    cmd_interpolate,
    cmd_noise_scale,
    cmd_sharpness,
    cmd_surface,
)
from largebatch.analysis.noise_scale import METHODS

# argparse takes "-1:2:31" for an unknown option; a value starting with "-<digit>" is a value here.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def _common(p: argparse.ArgumentParser, samples: int | None = None) -> None:
    p.add_argument("--device", default="cpu", help="where to load the run (default: cpu)")
    if samples is not None:
        p.add_argument(
            "--samples",
            type=int,
            default=samples,
            help=f"training examples, a seeded random subset (default: {samples})",
        )
        p.add_argument("--seed", type=int, default=0, help="seeds the sample subset (default: 0)")
    p.add_argument(
        "--batch-size", type=int, default=512, help="examples per forward pass (default: 512)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: the run's train.threads, as train and bench use it; "
        "unset there: torch's default)",
    )


def _bn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bn-mode",
        choices=("eval", "train"),
        default="eval",
        help="BatchNorm: eval = running statistics (default), train = batch statistics",
    )


def add_analyze_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``analyze`` and its sub-commands to the main CLI's ``subparsers``.

    Each sub-command sets ``func``: ``args.func(args) -> int`` runs it.
    """
    analyze = subparsers.add_parser(
        "analyze", help="diagnose a trained minimum (Hessian, sharpness, interpolation, ...)"
    )
    sub = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")

    p = sub.add_parser("hessian", help="top Hessian eigenvalues, trace and spectral density")
    p.add_argument("run", help="run directory")
    p.add_argument("--top-k", type=int, default=3, help="eigenvalues to compute (default: 3)")
    p.add_argument("--method", choices=("lanczos", "power"), default="lanczos")
    p.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default: 1e-4)")
    p.add_argument("--max-iter", type=int, help="most Hessian-vector products for eigenvalues")
    p.add_argument(
        "--trace-probes", type=int, default=20, help="Hutchinson probes, 0 = no trace (20)"
    )
    p.add_argument("--density", action="store_true", help="also the spectral density (SLQ)")
    p.add_argument("--density-runs", type=int, default=4, help="SLQ start vectors (default: 4)")
    p.add_argument("--density-steps", type=int, default=60, help="SLQ Lanczos steps (60)")
    _common(p, samples=2048)
    _bn(p)
    p.set_defaults(func=cmd_hessian)

    p = sub.add_parser("sharpness", help="Keskar et al.'s epsilon-sharpness")
    p.add_argument("run", help="run directory")
    p.add_argument("--epsilon", type=float, default=1e-3, help="box size (default: 1e-3)")
    p.add_argument(
        "--subspace-dim", type=int, help="random subspace dimension p (default: full space)"
    )
    p.add_argument("--max-iter", type=int, default=10, help="L-BFGS-B iterations (default: 10)")
    _common(p, samples=2048)
    _bn(p)
    p.set_defaults(func=cmd_sharpness)

    p = sub.add_parser("interpolate", help="1-D parametric plot between two runs (paper Fig. 6)")
    p.add_argument("run_a", metavar="RUN_A", help="run at alpha = 0 (e.g. the small-batch run)")
    p.add_argument("run_b", metavar="RUN_B", help="run at alpha = 1 (e.g. the large-batch run)")
    p.add_argument("--range", default="-1:2:31", help="alphas as START:STOP:NUM (default: -1:2:31)")
    p.add_argument(
        "--no-bn-recompute",
        action="store_true",
        help="keep the nearer end's BatchNorm statistics instead of recomputing them",
    )
    p.add_argument("--out", help="output folder (default: RUN_A/analysis)")
    _common(p)
    p.set_defaults(func=cmd_interpolate)
    p._negative_number_matcher = _NEGATIVE_VALUE  # accept "--range -1:2:31"

    p = sub.add_parser("surface", help="filter-normalised 1-D/2-D loss surface (Li et al.)")
    p.add_argument("run", help="run directory")
    p.add_argument("--grid", default="-1:1:21", help="steps as START:STOP:NUM (-1:1:21)")
    p.add_argument("--dim", type=int, choices=(1, 2), default=1, help="1 (curve) or 2 (contour)")
    p.add_argument("--no-bn-recompute", action="store_true", help="keep BN statistics")
    _common(p, samples=1024)
    p.set_defaults(func=cmd_surface)
    p._negative_number_matcher = _NEGATIVE_VALUE

    p = sub.add_parser("noise-scale", help="gradient noise scale vs the injected noise")
    p.add_argument("run", help="run directory")
    p.add_argument("--method", choices=METHODS, default="auto", help="per-example or per-batch")
    p.add_argument("--group-size", type=int, default=8, help="per_batch: examples per group (8)")
    _common(p, samples=1024)
    _bn(p)
    p.set_defaults(func=cmd_noise_scale)
    for command in sub.choices.values():
        command.set_defaults(func=_with_threads(command.get_default("func")))
    return analyze


def _run_threads(args: argparse.Namespace) -> int | None:
    """``train.threads`` of the run analysed (the first one), None when unset or unreadable
    (the command itself then says what is wrong with the run)."""
    from pathlib import Path

    from largebatch import rundir
    from largebatch.errors import UserError

    run = getattr(args, "run", None) or getattr(args, "run_a", None)
    try:
        return rundir.read_config(Path(run)).train.threads if run else None
    except (UserError, OSError, ValueError):
        return None


def _with_threads(command: Any) -> Any:
    """``command`` run with ``--threads`` torch threads (default: the run's ``train.threads``;
    neither set: torch's default, as ``largebatch train`` does)."""

    def run(args: argparse.Namespace) -> int:
        threads = args.threads
        if threads is not None and threads < 1:
            from largebatch.errors import UserError

            raise UserError(f"--threads {threads}: give 1 or more (or leave it out)")
        if threads is None:
            threads = _run_threads(args)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        return command(args)

    run.__name__ = run.__qualname__ = getattr(command, "__name__", "run")
    run.__doc__ = command.__doc__
    return run
