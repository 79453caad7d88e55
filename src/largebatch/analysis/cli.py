"""``largebatch analyze``: diagnostics of a trained minimum, read from run directories.

    largebatch analyze hessian RUN [--top-k K] [--samples N] [--method lanczos|power]
                                   [--trace-probes P] [--density] [--seed S] [--bn-mode eval|train]
    largebatch analyze sharpness RUN [--epsilon E] [--subspace-dim P] [--max-iter M] [--samples N]
    largebatch analyze interpolate RUN_A RUN_B [--range -1:2:31] [--no-bn-recompute] [--out DIR]
    largebatch analyze surface RUN [--grid -1:1:21] [--dim 1|2] [--seed S]
    largebatch analyze noise-scale RUN [--samples N] [--seed S]

Each command loads the run's last checkpoint (it never trains), writes ``<name>.json`` (values,
settings, seeds, BatchNorm mode, sample count, operator products, wall time) and ``<name>.png``
into ``RUN/analysis/`` and prints a short summary. Nothing else in the run directory is touched.
Samples are a seeded random subset of the training split cut into fixed batches, so a command
with the same seed measures the same function. Mistakes raise :class:`largebatch.errors.UserError`
(the main CLI prints them and exits with code 2).
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from largebatch.analysis.eigen import lanczos, power_iteration, spectral_density
from largebatch.analysis.hvp import HessianOperator, fixed_batches
from largebatch.analysis.interpolate import (
    check_same_architecture,
    interpolate_models,
    parse_range,
)
from largebatch.analysis.noise_scale import METHODS, gradient_noise_scale, noise_comparison
from largebatch.analysis.sharpness import epsilon_sharpness
from largebatch.analysis.surface import loss_surface
from largebatch.analysis.trace import hutchinson_trace
from largebatch.errors import UserError

# argparse takes "-1:2:31" for an unknown option; a value starting with "-<digit>" is a value here.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def _load(run_dir: str, device: str) -> Any:
    from largebatch.runs import load_run

    return load_run(run_dir, device=device)


def _analysis_dir(run_dir: Path, out: str | None = None) -> Path:
    folder = Path(out) if out else Path(run_dir) / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}


def _record(command: str, args: argparse.Namespace, run: Any, started: float) -> dict[str, Any]:
    return {
        "command": f"analyze {command}",
        "run_dir": str(run.run_dir),
        "checkpoint": {"epoch": run.checkpoint.get("epoch"), "step": run.checkpoint.get("step")},
        "model": run.config.model.name,
        "data": run.config.data.name,
        "settings": _settings(args),
        "device": str(run.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }


def _write(folder: Path, stem: str, record: dict[str, Any], fig: Figure) -> tuple[Path, Path]:
    from largebatch.rundir import write_json

    json_path, png_path = folder / f"{stem}.json", folder / f"{stem}.png"
    write_json(json_path, record)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    return json_path, png_path


def _batches(run: Any, samples: int, batch_size: int, seed: int) -> tuple[list, int]:
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


def cmd_hessian(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    run = _load(args.run, args.device)
    batches, n = _batches(run, args.samples, args.batch_size, args.seed)
    op = HessianOperator(run.model, batches, bn_mode=args.bn_mode)
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
    values: dict[str, Any] = {
        "eigenvalues": eig.eigenvalues.tolist(),
        "eigen_converged": eig.converged,
        "eigen_residuals": eig.residuals.tolist(),
        "eigen_matvecs": eig.num_matvecs,
        "eigen_history": eig.history,
    }
    trace = density = None
    if args.trace_probes > 0:
        seeds["trace_probes"] = args.seed + 1
        gen_t = torch.Generator().manual_seed(args.seed + 1)
        trace = hutchinson_trace(op.matvec, op.dim, args.trace_probes, generator=gen_t)
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
    panels = 2 + (density is not None)
    fig = Figure(figsize=(4.2 * panels, 3.6))
    ax = fig.add_subplot(1, panels, 1)
    ax.plot(range(1, args.top_k + 1), eig.eigenvalues.tolist(), "o-")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="rank", ylabel="eigenvalue", title=f"top-{args.top_k} Hessian eigenvalues")
    ax = fig.add_subplot(1, panels, 2)
    ax.plot(range(1, len(eig.history) + 1), eig.history)
    ax.set(xlabel="Hessian-vector products", ylabel="top estimate", title=f"{args.method}")
    if density is not None:
        ax = fig.add_subplot(1, panels, 3)
        ax.semilogy(density.grid.tolist(), density.density.clamp_min(1e-12).tolist())
        ax.set(xlabel="eigenvalue", ylabel="density", title="spectral density (SLQ)")
    _, png = _write(_analysis_dir(run.run_dir), "hessian", record, fig)
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
    op = HessianOperator(run.model, batches, bn_mode=args.bn_mode)
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
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ts, segment, "-")
    ax.plot([0, 1], [res.f_x, res.f_max], "o")
    space = "full space" if args.subspace_dim is None else f"{args.subspace_dim}-D subspace"
    ax.set(
        xlabel="t (theta + t y*, y* = worst perturbation found)",
        ylabel="training loss",
        title=f"eps-sharpness {res.sharpness:.3g} (eps={args.epsilon}, {space})",
    )
    _, png = _write(_analysis_dir(run.run_dir), "sharpness", record, fig)
    print(
        f"epsilon-sharpness {res.sharpness:.4g} (eps {args.epsilon}, {space}): loss "
        f"{res.f_x:.4g} -> {res.f_max:.4g} in {res.iterations} L-BFGS-B iterations"
    )
    print(f"{n} samples, bn_mode {args.bn_mode}; wrote {png.with_suffix('.json')} and {png}")
    return 0


# ----------------------------------------------------------------------------------------------
# interpolate


def _all_batches(split: Any, batch_size: int) -> list:
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
    train_batches = _all_batches(run_a.data.train, args.batch_size)
    val_batches = _all_batches(run_a.data.val, args.batch_size)
    res = interpolate_models(
        run_a.model,
        run_b.model,
        alphas,
        train_batches,
        val_batches,
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
        values={
            "alpha": res.alphas,
            "train_loss": res.train_loss,
            "train_accuracy": res.train_accuracy,
            "val_loss": res.val_loss,
            "val_accuracy": res.val_accuracy,
        },
    )
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(res.alphas, res.train_loss, ":", color="tab:blue", label="train loss")
    ax.semilogy(res.alphas, res.val_loss, "-", color="tab:blue", label="validation loss")
    ax.set_xlabel(f"alpha  (0: {Path(args.run_a).name}, 1: {Path(args.run_b).name})")
    ax.set_ylabel("cross-entropy (log scale)", color="tab:blue")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    acc = ax.twinx()
    acc.plot(res.alphas, [100 * a for a in res.train_accuracy], ":", color="tab:red")
    acc.plot(res.alphas, [100 * a for a in res.val_accuracy], "-", color="tab:red")
    acc.set_ylabel("accuracy (%)", color="tab:red")
    ax.set_title("theta(a) = (1 - a) theta_A + a theta_B  (train dotted, validation solid)")
    ax.title.set_fontsize(9)
    _, png = _write(_analysis_dir(run_a.run_dir, args.out), "interpolate", record, fig)
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
    fig = Figure(figsize=(5.2, 4))
    ax = fig.add_subplot(1, 1, 1)
    if args.dim == 1:
        ax.plot(res.coords, res.loss.tolist(), "-o", markersize=3)
        ax.set(xlabel="step along a filter-normalised direction", ylabel="training loss")
    else:
        grid = res.loss.T.log10()  # rows: second direction, columns: first
        contour = ax.contour(res.coords, res.coords, grid.tolist(), levels=20)
        fig.colorbar(contour, ax=ax, label="log10 training loss")
        ax.plot([0], [0], "k+")
        ax.set(xlabel="direction 1", ylabel="direction 2")
    ax.set_title(f"{args.dim}-D loss surface (Li et al.), {n} samples")
    stem = f"surface_{args.dim}d"
    _, png = _write(_analysis_dir(run.run_dir), stem, record, fig)
    print(
        f"{args.dim}-D surface over {len(coords)} points per axis: loss {res.loss.min():.4g} .. "
        f"{res.loss.max():.4g}; BN statistics "
        f"{'recomputed' if res.bn_recomputed else 'not recomputed'}"
    )
    print(f"wrote {png.with_suffix('.json')} and {png}")
    return 0


# ----------------------------------------------------------------------------------------------
# noise-scale


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
        )
    except ValueError as e:
        raise UserError(f"noise-scale: {e}") from None
    cfg = run.config
    comparison = noise_comparison(
        scale,
        alpha=cfg.noise.alpha,
        gamma=cfg.noise.gamma,
        step=int(run.checkpoint.get("step", 0)),
        batch_size=cfg.train.global_batch_size,
        base_batch_size=cfg.optim.base_batch_size,
    )
    record = _record("noise-scale", args, run, started)
    record.update(
        bn_mode=args.bn_mode,
        num_samples=scale.num_samples,
        num_params=scale.num_params,
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
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    sizes = [2**i for i in range(0, 17)]
    per_entry = [scale.trace_sigma / (scale.num_params * b) for b in sizes]
    ax.loglog(sizes, per_entry, "-", label="mini-batch noise tr(Sigma)/(P B)")
    ax.loglog([cfg.train.global_batch_size], [comparison["minibatch_variance_per_entry"]], "o")
    if comparison["injected_variance_per_entry"] > 0:
        ax.axhline(
            comparison["injected_variance_per_entry"],
            color="tab:red",
            label=f"injected sigma_t^2 at t={comparison['step']}",
        )
    if math.isfinite(scale.b_simple) and scale.b_simple > 0:
        ax.axvline(scale.b_simple, color="gray", ls="--", label=f"B_simple = {scale.b_simple:.3g}")
    ax.set(xlabel="batch size B", ylabel="variance per gradient entry")
    ax.legend(fontsize=8)
    _, png = _write(_analysis_dir(run.run_dir), "noise_scale", record, fig)
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


# ----------------------------------------------------------------------------------------------
# parser


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
    return analyze
