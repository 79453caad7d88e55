"""The five ``largebatch analyze`` commands: load a run, measure, write JSON + PNG, summarise.

Each ``cmd_*`` takes the parsed arguments (see :mod:`largebatch.analysis.cli`) and returns an exit
code. It loads the run's last checkpoint (it never trains), writes ``<name>.json`` (values,
settings, seeds, BatchNorm mode, sample count, operator products, wall time) and ``<name>.png``
(drawn from that record by :mod:`largebatch.analysis.figures`) into ``RUN/analysis/`` and prints a
short summary. Nothing else in the run directory is touched. Samples are a seeded random subset of
the training split cut into fixed batches, so a command with the same seed measures the same
function. The loss measured is the run's own (its batch mean: ``train.loss`` without label
smoothing, :func:`largebatch.losses.evaluation_loss`), plugin losses included. Mistakes raise
:class:`largebatch.errors.UserError` naming the fix.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from largebatch.analysis import figures
from largebatch.analysis.eigen import (
    WHICH_NAMES,
    EigenResult,
    lanczos,
    power_iteration,
    spectral_density,
)
from largebatch.analysis.hvp import HessianOperator, fixed_batches
from largebatch.analysis.interpolate import (
    check_same_architecture,
    interpolate_models,
    parse_range,
)
from largebatch.analysis.noise_scale import gradient_noise_scale, noise_comparison
from largebatch.analysis.sharpness import epsilon_sharpness
from largebatch.analysis.surface import loss_surface
from largebatch.analysis.trace import hutchinson_trace
from largebatch.errors import UserError
from largebatch.losses import evaluation_loss_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from largebatch.analysis.runs import LoadedRun
    from largebatch.data import Split


def _load(run_dir: str, device: str) -> LoadedRun:
    # the engine and data stack: only when a command runs
    from largebatch.analysis.runs import load_run

    return load_run(run_dir, device=device)


def _analysis_dir(run_dir: Path, out: str | None = None) -> Path:
    folder = Path(out) if out else Path(run_dir) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}


def _record(
    command: str, args: argparse.Namespace, run: LoadedRun, started: float
) -> dict[str, Any]:
    return {
        "command": f"analyze {command}",
        "run_dir": str(run.run_dir),
        "checkpoint": {"epoch": run.checkpoint.get("epoch"), "step": run.checkpoint.get("step")},
        "model": run.config.model.name,
        "data": run.config.data.name,
        "loss": evaluation_loss_name(run.config.train),  # the loss the values are of
        "settings": _settings(args),
        "device": str(run.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }


def _write(
    folder: Path, stem: str, record: dict[str, Any], draw: Callable[[dict[str, Any]], Figure]
) -> Path:
    """Write ``stem.json`` and ``stem.png`` (drawn from the record); return the PNG's path."""
    from largebatch.rundir import write_json

    png_path = folder / f"{stem}.png"
    write_json(folder / f"{stem}.json", record)
    draw(record).savefig(png_path, dpi=110)
    return png_path


def _batches(run: LoadedRun, samples: int, batch_size: int, seed: int) -> tuple[list, int]:
    if samples <= 0:
        raise UserError(f"--samples must be > 0, got {samples}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {batch_size}")
    batches, indices = fixed_batches(run.data.train, samples, batch_size, seed)
    return batches, len(indices)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------
# hessian


def eigen_record(eig: EigenResult) -> dict[str, Any]:
    """The eigen part of ``hessian.json``'s ``values``: eigenvalues in their order, which end of
    the spectrum they are (``eigen_which``: ``largest_algebraic`` or ``largest_magnitude``), the
    true residuals ``|H u - lambda u|``, whether all are within tolerance, products used."""
    return {
        "eigenvalues": eig.eigenvalues.tolist(),
        "eigen_which": WHICH_NAMES[eig.which],
        "eigen_converged": eig.converged,
        "eigen_residuals": eig.residuals.tolist(),
        "eigen_matvecs": eig.num_matvecs,
        "eigen_history": eig.history,
    }


def cmd_hessian(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    run = _load(args.run, args.device)
    batches, n = _batches(run, args.samples, args.batch_size, args.seed)
    op = HessianOperator(run.model, batches, loss_fn=run.loss_fn, bn_mode=args.bn_mode)
    if not 1 <= args.top_k <= op.dim:
        raise UserError(
            f"--top-k {args.top_k}: the model has {op.dim} parameters; use 1 <= K <= {op.dim}"
        )
    seeds = {"samples": args.seed, "start_vector": args.seed}
    gen = torch.Generator().manual_seed(args.seed)
    solver = lanczos if args.method == "lanczos" else power_iteration
    kwargs = {"max_iter": args.max_iter} if args.max_iter else {}
    eig = solver(
        op.matvec, op.dim, args.top_k, tol=args.tol, generator=gen, device=run.device, **kwargs
    )
    values = eigen_record(eig)
    trace = density = None
    if args.trace_probes > 0:
        seeds["trace_probes"] = args.seed + 1
        gen_t = torch.Generator().manual_seed(args.seed + 1)
        trace = hutchinson_trace(
            op.matvec, op.dim, args.trace_probes, generator=gen_t, device=run.device
        )
        values.update(trace=trace.estimate, trace_stderr=_finite(trace.stderr))
        values["trace_matvecs"] = trace.num_matvecs
    if args.density:
        seeds["density_probes"] = args.seed + 2
        gen_d = torch.Generator().manual_seed(args.seed + 2)
        density = spectral_density(
            op.matvec,
            op.dim,
            num_runs=args.density_runs,
            num_steps=args.density_steps,
            generator=gen_d,
            device=run.device,
        )
        values["density"] = {
            "grid": density.grid.tolist(),
            "density": density.density.tolist(),
            "sigma": density.sigma,
            "nodes": [[v for v in row if not math.isnan(v)] for row in density.nodes.tolist()],
            "weights": density.weights.tolist(),
            "matvecs": density.num_matvecs,
        }
    record = _record("hessian", args, run, started)
    record.update(
        bn_mode=args.bn_mode,
        num_samples=n,
        num_params=op.dim,
        num_matvecs=op.num_matvecs,
        seeds=seeds,
        method=args.method,
        values=values,
    )
    png = _write(_analysis_dir(run.run_dir), "hessian", record, figures.hessian_figure)
    line = f"top eigenvalues: {', '.join(f'{v:.4g}' for v in values['eigenvalues'])}"
    if trace is not None:
        line += f"; trace {trace.estimate:.4g} +- {trace.stderr:.2g}"
    print(line)
    print(f"{n} samples, bn_mode {args.bn_mode}, {op.num_matvecs} Hessian-vector products")
    print(f"wrote {png.with_suffix('.json')} and {png}")
    return 0


# ----------------------------------------------------------------------------------------------
# sharpness


def cmd_sharpness(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.epsilon <= 0:
        raise UserError(f"--epsilon must be > 0, got {args.epsilon}")
    if args.max_iter <= 0:
        raise UserError(f"--max-iter must be > 0, got {args.max_iter}")
    run = _load(args.run, args.device)
    batches, n = _batches(run, args.samples, args.batch_size, args.seed)
    op = HessianOperator(run.model, batches, loss_fn=run.loss_fn, bn_mode=args.bn_mode)
    if args.subspace_dim is not None and not 1 <= args.subspace_dim <= op.dim:
        raise UserError(f"--subspace-dim must be in 1..{op.dim} (the parameter count)")
    x = op.parameters_vector()
    gen = torch.Generator().manual_seed(args.seed)
    res = epsilon_sharpness(
        op.loss_and_gradient_at,
        x,
        args.epsilon,
        subspace_dim=args.subspace_dim,
        max_iter=args.max_iter,
        generator=gen,
    )
    # The loss along the segment to the worst point found, for the figure.
    ts = [i / 10 for i in range(-10, 11)]
    segment = [op.loss_and_gradient_at(x + t * res.perturbation)[0] for t in ts]
    record = _record("sharpness", args, run, started)
    record.update(
        bn_mode=args.bn_mode,
        num_samples=n,
        num_params=op.dim,
        num_evaluations=res.num_evaluations,
        seeds={"samples": args.seed, "subspace_and_start": args.seed},
        values={
            "sharpness": res.sharpness,
            "loss": res.f_x,
            "max_loss": res.f_max,
            "perturbation_norm": float(res.perturbation.norm()),
            "lbfgs_iterations": res.iterations,
            "lbfgs_message": res.message,
            "segment_t": ts,
            "segment_loss": segment,
        },
    )
    space = "full space" if args.subspace_dim is None else f"{args.subspace_dim}-D subspace"
    png = _write(_analysis_dir(run.run_dir), "sharpness", record, figures.sharpness_figure)
    print(
        f"epsilon-sharpness {res.sharpness:.4g} (eps {args.epsilon}, {space}): loss "
        f"{res.f_x:.4g} -> {res.f_max:.4g} in {res.iterations} L-BFGS-B iterations"
    )
    print(f"{n} samples, bn_mode {args.bn_mode}; wrote {png.with_suffix('.json')} and {png}")
    return 0


# ----------------------------------------------------------------------------------------------
# interpolate


def _all_batches(split: Split, batch_size: int) -> list:
    indices = torch.arange(len(split))
    return [split.get_batch(chunk) for chunk in indices.split(batch_size)]


def cmd_interpolate(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    alphas = parse_range(args.range)
    run_a = _load(args.run_a, args.device)
    run_b = _load(args.run_b, args.device)
    if run_a.config.model != run_b.config.model:
        raise UserError(
            f"the runs' models differ ({args.run_a}: {run_a.config.model}; {args.run_b}: "
            f"{run_b.config.model}); interpolate between runs with the same model.* settings"
        )
    check_same_architecture(run_a.model, run_b.model)
    if run_a.config.train.loss != run_b.config.train.loss:
        raise UserError(
            f"the runs' losses differ (train.loss {run_a.config.train.loss} and "
            f"{run_b.config.train.loss}); interpolate between runs of one loss"
        )
    train_batches = _all_batches(run_a.data.train, args.batch_size)
    val_batches = _all_batches(run_a.data.val, args.batch_size)
    res = interpolate_models(
        run_a.model,
        run_b.model,
        alphas,
        train_batches,
        val_batches,
        loss_fn=run_a.loss_fn,
        bn_recompute=not args.no_bn_recompute,
    )
    record = _record("interpolate", args, run_a, started)
    record.update(
        run_b=str(run_b.run_dir),
        checkpoint_b={"epoch": run_b.checkpoint.get("epoch"), "step": run_b.checkpoint.get("step")},
        same_data_config=run_a.config.data == run_b.config.data,
        bn_mode="eval",
        bn_recomputed=res.bn_recomputed,
        num_samples={"train": res.num_train, "val": res.num_val},
        num_evaluations=len(alphas),
        seeds={},  # nothing random: all training and validation examples, in order
        values={
            "alpha": res.alphas,
            "train_loss": res.train_loss,
            "train_accuracy": res.train_accuracy,
            "val_loss": res.val_loss,
            "val_accuracy": res.val_accuracy,
        },
    )
    folder = _analysis_dir(run_a.run_dir, args.out)
    png = _write(folder, "interpolate", record, figures.interpolation_figure)
    best = min(range(len(res.alphas)), key=lambda i: res.val_loss[i])
    print(
        f"{len(alphas)} points, a in [{alphas[0]:g}, {alphas[-1]:g}]; BN statistics "
        f"{'recomputed' if res.bn_recomputed else 'not recomputed'}; lowest validation loss "
        f"{res.val_loss[best]:.4g} at a = {res.alphas[best]:g}"
    )
    print(f"wrote {png.with_suffix('.json')} and {png}")
    return 0


# ----------------------------------------------------------------------------------------------
# surface


def cmd_surface(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    coords = parse_range(args.grid)
    run = _load(args.run, args.device)
    batches, n = _batches(run, args.samples, args.batch_size, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    res = loss_surface(
        run.model,
        batches,
        coords,
        dim=args.dim,
        generator=gen,
        loss_fn=run.loss_fn,
        bn_recompute=not args.no_bn_recompute,
    )
    record = _record("surface", args, run, started)
    record.update(
        bn_mode="eval",
        bn_recomputed=res.bn_recomputed,
        num_samples=n,
        num_evaluations=res.num_evaluations,
        seeds={"samples": args.seed, "directions": args.seed},
        values={"coords": res.coords, "loss": res.loss.tolist(), "accuracy": res.accuracy.tolist()},
    )
    stem = f"surface_{args.dim}d"
    png = _write(_analysis_dir(run.run_dir), stem, record, figures.surface_figure)
    print(
        f"{args.dim}-D surface over {len(coords)} points per axis: loss {res.loss.min():.4g} .. "
        f"{res.loss.max():.4g}; BN statistics "
        f"{'recomputed' if res.bn_recomputed else 'not recomputed'}"
    )
    print(f"wrote {png.with_suffix('.json')} and {png}")
    return 0


# ----------------------------------------------------------------------------------------------
# noise-scale


def recorded_noise_variance(run_dir: Path, step: int) -> float:
    """The injected variance per entry the run recorded at its last update up to ``step``
    (``noise_variance`` of ``metrics.jsonl`` and ``steps.jsonl``): the shaped kinds size their
    noise from gradients measured during training, so no closed form gives it afterwards."""
    from largebatch import rundir

    rows = [
        row
        for name in (rundir.METRICS, rundir.STEPS)
        for row in rundir.read_jsonl(run_dir / name)
        if "noise_variance" in row and int(row.get("step", -1)) <= step
    ]
    if not rows:
        raise UserError(
            f"noise-scale: {run_dir} records no injected noise variance up to update {step} "
            "(its metrics.jsonl and steps.jsonl are missing or empty); the shaped noise kinds' "
            "size is measured during training, so re-run or resume the run to record it"
        )
    return float(max(rows, key=lambda row: int(row["step"]))["noise_variance"])


def cmd_noise_scale(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    run = _load(args.run, args.device)
    batches, n = _batches(run, args.samples, args.batch_size, args.seed)
    try:
        scale = gradient_noise_scale(
            run.model,
            batches,
            method=args.method,
            group_size=args.group_size,
            bn_mode=args.bn_mode,
            loss_fn=run.loss_fn,
        )
    except ValueError as e:
        raise UserError(f"noise-scale: {e}") from None
    cfg = run.config
    step = int(run.checkpoint.get("step", 0))
    injected = None if cfg.noise.kind == "isotropic" else recorded_noise_variance(run.run_dir, step)
    comparison = noise_comparison(
        scale,
        alpha=cfg.noise.alpha,
        gamma=cfg.noise.gamma,
        step=step,
        batch_size=cfg.train.global_batch_size,
        base_batch_size=cfg.optim.base_batch_size,
        injected=injected,
    )
    comparison["noise_kind"] = cfg.noise.kind
    record = _record("noise-scale", args, run, started)
    record.update(
        bn_mode=args.bn_mode,
        num_samples=scale.num_samples,
        num_params=scale.num_params,
        num_gradients=scale.num_groups,
        seeds={"samples": args.seed},
        values={
            "trace_sigma": scale.trace_sigma,
            "grad_norm_sq": scale.grad_norm_sq,
            "b_simple": _finite(scale.b_simple),
            "mean_grad_norm_sq": scale.mean_grad_norm_sq,
            "method": scale.method,
            "group_size": scale.group_size,
            "num_groups": scale.num_groups,
            **comparison,
        },
    )
    png = _write(_analysis_dir(run.run_dir), "noise_scale", record, figures.noise_scale_figure)
    print(
        f"tr(Sigma) {scale.trace_sigma:.4g}, |G|^2 {scale.grad_norm_sq:.4g}, B_simple "
        f"{scale.b_simple:.4g} ({scale.method}, {scale.num_samples} samples)"
    )
    print(
        f"per entry: mini-batch noise at B={cfg.train.global_batch_size} "
        f"{comparison['minibatch_variance_per_entry']:.3g}; injected noise at step "
        f"{comparison['step']} {comparison['injected_variance_per_entry']:.3g}"
    )
    print(f"wrote {png.with_suffix('.json')} and {png}")
    return 0
