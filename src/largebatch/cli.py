"""The ``largebatch`` command line.

    largebatch train CONFIG.yaml [KEY=VALUE ...] [--out DIR] [--resume] [--stop-after N]
    largebatch demo [--quick] [--out DIR] [--seeds N]
    largebatch sweep SPEC.yaml|NAME [--out DIR] [--workers N] [--quick] [--seeds N]
    largebatch report DIR... [--out DIR] [--target ACC]
    largebatch analyze {hessian,sharpness,interpolate,surface,noise-scale} ...
    largebatch download NAME [--root DIR]
    largebatch bench [CONFIG] [--batch-sizes 32,64,...] [--steps N] [--out DIR]
    largebatch list
    largebatch completion bash|zsh|fish|tcsh

Exit codes:

- 0: done (also a run stopped by ``--stop-after``; it prints how to continue).
- 1: the training loss diverged (``summary.json`` says ``diverged``).
- 2: a user mistake (bad config key or value, missing data, a run directory that is not one, a
  run directory in use): one ``largebatch COMMAND: error:`` line that names the fix.
- 143 (128 + 15): ``train`` stopped by SIGTERM (batch schedulers, ``torchrun``); 130 (128 + 2):
  stopped by SIGINT (Ctrl-C). The run is checkpointed where it stood, ``summary.json`` says
  ``stopped`` with the signal number under ``signal``, and the exact ``--resume`` command is
  printed; the resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from largebatch.errors import UserError, describe_os_error


def _default_out(config: str | None) -> Path:
    stem = Path(config).stem if config else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command line that continues this run (same config and overrides, ``--resume``)."""
    argv = ["largebatch", "train", args.config, *args.overrides, "--out", str(out), "--resume"]
    return shlex.join(argv)


def _report_stop(args: argparse.Namespace, out: Path, summary: dict) -> None:
    """Where the checkpoint is and how to continue, on stderr (stdout may be a pipe to a log)."""
    from largebatch.rundir import CHECKPOINT

    ckpt = out / CHECKPOINT
    print(f"stopped: {summary.get('message', '')}", file=sys.stderr)
    if ckpt.is_file():
        print(f"checkpoint: {ckpt} (update {summary.get('step')})", file=sys.stderr)
    else:
        print("checkpoint: none yet (the run restarts from the beginning)", file=sys.stderr)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    how = f" (launched as before: torchrun, world size {world})" if world > 1 else ""
    print(f"resume with{how}:", file=sys.stderr)
    print(f"  {resume_command(args, out)}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from largebatch.config import load_config
    from largebatch.distributed import shutdown_distributed
    from largebatch.engine import train
    from largebatch.presets import resolve_preset

    if args.resume and not args.out:
        raise UserError(
            "--resume needs --out RUN_DIR: the run directory to continue (without it a new run "
            "would start in runs/...)"
        )
    cfg = load_config(str(resolve_preset(args.config)), args.overrides)
    out = Path(args.out) if args.out else _default_out(args.config)
    try:
        result = train(cfg, out, resume=args.resume, stop_after_epochs=args.stop_after)
    except OSError as e:
        shutdown_distributed(completed=False)
        if not (out / "config.yaml").is_file():
            raise
        # Checkpoints are written to a temporary file and renamed: the last complete one stands.
        raise UserError(
            f"{describe_os_error(e)}; the run's last complete checkpoint is intact: continue "
            f"with {resume_command(args, out)}"
        ) from None
    except BaseException:
        shutdown_distributed(completed=False)
        raise
    shutdown_distributed()
    signum = result.summary.get("signal")
    code = 128 + int(signum) if result.status == "stopped" and signum else 0
    if int(os.environ.get("RANK", "0")) != 0:
        return 1 if result.status == "diverged" else code  # rank 0 reports for the job
    final = result.summary.get("final") or {}
    if result.status == "diverged":
        print(f"diverged: {result.summary['message']}", file=sys.stderr)
        print(f"run directory: {out} (status diverged)", file=sys.stderr)
        return 1
    if final:
        print(
            f"{result.status}: {final['epoch']} epochs, train acc {100 * final['train_acc']:.2f}%"
            f", val acc {100 * final['val_acc']:.2f}%, gap {100 * final['gap']:.2f} points"
        )
    if result.status == "stopped":
        _report_stop(args, out, result.summary)
    elif result.summary.get("message"):
        print(result.summary["message"])
    print(f"run directory: {out}")
    return code


def cmd_list(args: argparse.Namespace) -> int:
    from largebatch.data import DATASETS
    from largebatch.losses import LOSSES
    from largebatch.models import MODELS
    from largebatch.models.registry import model_arguments
    from largebatch.plugins import origin

    for title, kind, names in (
        ("datasets (data.name)", "dataset", DATASETS),
        ("models (model.name)", "model", MODELS),
        ("losses (train.loss)", "loss", LOSSES),
    ):
        print(f"{title}:")
        for info in names.values():
            source = origin(kind, info.name)  # a plugin's: where it came from, its model.args
            takes = model_arguments(info) if kind == "model" else {}
            extra = f"; model.args: {', '.join(takes)}" if takes else ""
            tag = f"  [plugin {source}{extra}]" if source else ""
            print(f"  {info.name:<16} {info.description}{tag}")
    from largebatch.presets import header_field, list_presets, presets_root

    presets = list_presets()
    if presets:
        print(f"presets (largebatch train NAME; files in {presets_root()}):")
        for name in presets:
            print(f"  {name}")
    for subdir, command in (
        ("sweeps", "sweep NAME [--quick]"),
        ("compare", "compare NAME [--quick]"),
    ):
        found = list_presets(subdir)
        if found:
            # the time each takes: its header's "Time:" field, as measured (or "not measured")
            print(f"{command.split()[0]} presets (largebatch {command}), with the time each takes:")
            for name, path in found.items():
                print(f"  {name:<18} time: {header_field(path, 'Time') or 'not measured'}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from largebatch.data.download import DOWNLOADS, download_dataset

    if args.name not in DOWNLOADS:
        raise UserError(f"no download for '{args.name}'; valid: {', '.join(sorted(DOWNLOADS))}")
    root = Path(args.root) if args.root else Path.home() / ".cache" / "largebatch"
    folder = download_dataset(args.name, root)
    print(f"{args.name}: ready in {folder} (pass data.root={folder})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from largebatch.experiments.demo import run_demo

    return run_demo(quick=args.quick, out=Path(args.out) if args.out else None, seeds=args.seeds)


def _sweep(args: argparse.Namespace) -> int:
    from largebatch.experiments.sweep import cmd_sweep

    return cmd_sweep(args)


def _report(args: argparse.Namespace) -> int:
    from largebatch.report import cmd_report

    return cmd_report(args)


def _compare(args: argparse.Namespace) -> int:
    from largebatch.compare.protocol import cmd_compare

    return cmd_compare(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="largebatch",
        description="Large mini-batch training: close the generalization gap, diagnose minima.",
    )
    from largebatch import __version__

    parser.add_argument("--version", action="version", version=f"largebatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train from a config file into a run directory")
    p.add_argument("config", help="YAML config file, or a preset name (see: largebatch list)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.global_batch_size=1024 optim.lr=0.05",
    )
    p.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (the config must match the "
        "stored one, except e.g. train.epochs: a run may be extended unless its schedule is "
        "cosine)",
    )
    p.add_argument(
        "--stop-after",
        type=_positive_int,
        metavar="EPOCHS",
        help="stop once this many epochs are done (resume later with --resume)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "demo", help="small vs large batch, + the paper's noise, + the best measured fix (MNIST-1D)"
    )
    p.add_argument("--quick", action="store_true", help="a fast version (under 2 minutes)")
    p.add_argument("--out", help="output folder (default: runs/demo[-quick])")
    p.add_argument("--seeds", type=int, help="seeds per setting (default: 10, quick: 2)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="a grid of settings x seeds from a spec, resumable")
    p.add_argument("spec", help="sweep spec (YAML), or a preset's name (see: largebatch list)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run, e.g. data.root=DIR"
    )
    p.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>[-quick])")
    p.add_argument(
        "--workers", type=int, help="runs at once (default 1; on a CPU threads are split)"
    )
    p.add_argument("--quick", action="store_true", help="the spec's smoke form (fewer epochs)")
    p.add_argument("--seeds", type=int, help="seeds per setting (replaces the spec's)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("report", help="tables (mean ± std over seeds) and figures from runs")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or sweep folders")
    p.add_argument("--out", help="output folder (default: DIR/report for one DIR, else report)")
    p.add_argument("--target", type=float, help="val accuracy (%%) for steps-to-target")
    p.add_argument(
        "--gap",
        nargs=2,
        metavar=("SMALL", "LARGE"),
        help="labels of the small- and large-batch settings: adds how much of the gap each "
        "setting closes, paired by seed, with bootstrap intervals",
    )
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "compare",
        help="pick the fix for a large batch's gap: diagnose, screen, promote, confirm on fresh "
        "seeds (resumable)",
    )
    p.add_argument("spec", help="comparison spec (YAML; presets in configs/compare/)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run, e.g. data.root=DIR"
    )
    p.add_argument("--out", help="folder (default: runs/compare/<name>[-quick])")
    p.add_argument(
        "--workers", type=int, help="runs at once (default 1; on a CPU threads are split)"
    )
    p.add_argument("--quick", action="store_true", help="the spec's smoke form")
    p.set_defaults(func=_compare)

    p = sub.add_parser("download", help="fetch a dataset's official files (needs a network)")
    p.add_argument("name", help="fashion_mnist | mnist | cifar10 | cifar100 | caltech101")
    p.add_argument("--root", help="target folder (default: ~/.cache/largebatch)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("list", help="list datasets, models and presets")
    p.set_defaults(func=cmd_list)

    from largebatch.experiments.bench import add_bench_parser

    add_bench_parser(sub)

    from largebatch.completion import add_completion_parser

    add_completion_parser(sub, parser)

    try:
        from largebatch.analysis.cli import add_analyze_parser
    except ImportError:
        pass
    else:
        add_analyze_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from largebatch.plugins import load_plugins

        load_plugins()  # the installed plugins' entry points, for every command
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"largebatch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A full disk, a read-only folder, a path that is a file: the machine, not a bug.
        print(f"largebatch {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Training itself turns Ctrl-C into a checkpointed stop; this is Ctrl-C before or after.
        print(f"largebatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
