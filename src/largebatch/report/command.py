"""``largebatch report``: tables (mean ± std over seeds) and figures from run directories.

Reads run directories only (never trains). Runs are grouped by *setting*: the resolved config
minus the seeds (``train.seed``, ``noise.seed``) and the keys that do not change what is computed
(``IGNORED_KEYS``: threads, device, progress, ...). For each setting, over its completed runs:
final and best validation accuracy, train accuracy, gap, updates and wall time as
mean ± std (``ddof=1``) with n, and a 95% t-interval of the final validation accuracy. Diverged and
failed runs are counted, never averaged in.

Writes into the output folder ``report.md`` (tables, figures, the runs, seeds and git commits it
was made from), ``table.md`` (the main table), ``report.json`` (every number) and the PNG
figures of :mod:`largebatch.report.figures`.

Steps to a target accuracy (Shallue et al.) use the evaluations of ``evals.jsonl``
(``train.eval_every_steps``) together with the per-epoch rows of ``metrics.jsonl``: the first
evaluated step at which the validation accuracy reaches the target.

    largebatch report runs/sweeps/demo --out runs/demo-report
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from largebatch import rundir
from largebatch.errors import UserError
from largebatch.report.data import (
    Group,
    Run,
    default_target,
    find_runs,
    group_runs,
    hessian_rows,
    scan_runs,
    setting_rows,
    skip_lines,
    spearman,
    stat,
    steps_rows,
    steps_to_target,
)

__all__ = [
    "Group",
    "Run",
    "cmd_report",
    "find_runs",
    "format_table",
    "group_runs",
    "setting_rows",
    "stat",
    "steps_to_target",
    "write_report",
]


def _cell(d: dict[str, Any], digits: int = 2) -> str:
    if d["n"] == 0:
        return "–"
    if d["n"] == 1 or math.isnan(d["std"]):
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | B | lr | n | final val acc (%) | 95% CI | best val acc (%) "
        "| train acc (%) | gap (points) | updates | wall (s) | not completed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r["final_val_acc"]["ci95"]
        lines.append(
            f"| {r['setting']} | {r['batch']} | {r['lr']:g} | {r['final_val_acc']['n']} | "
            f"{_cell(r['final_val_acc'])} | {'–' if math.isnan(ci) else f'± {ci:.2f}'} | "
            f"{_cell(r['best_val_acc'])} | {_cell(r['train_acc'])} | {_cell(r['gap'])} | "
            f"{_cell(r['updates'], 0)} | {_cell(r['wall_s'], 1)} | "
            f"{len(r['not_completed']) or ''} |"
        )
    return "\n".join(lines)


def _commits(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        git = r.env.get("git") or {}
        commit = git.get("commit")
        text = (
            f"{commit[:10]}{' (dirty tree)' if git.get('dirty') else ''}" if commit else "unknown"
        )
        if text not in out:
            out.append(text)
    return out


def write_report(
    dirs: list[str | Path],
    out: Path,
    target: float | None = None,
    title: str | None = None,
    gap: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``table.md``, ``report.json`` and the figures; return the numbers.

    Args:
        dirs: run directories, sweep folders, or folders holding run directories.
        out: the output folder (created).
        target: validation accuracy (a fraction) for steps-to-target; default: the best accuracy
            every completed run reaches.
    """
    from largebatch.report import figures as report_figures

    out = Path(out)
    if gap is not None:
        check_gap_labels(gap)
    check_out(out)
    runs, skipped = scan_runs(dirs)
    for line in skip_lines(runs, skipped):
        print(f"report: {line}", file=sys.stderr)
    groups = group_runs(runs)
    rundir.make_out_folder(out)
    rows = setting_rows(groups)
    table = format_table(rows)
    target_asked = target is not None
    target = default_target(groups) if target is None else target
    steps = steps_rows(groups, target) if not math.isnan(target) else []
    hessian = hessian_rows(groups)
    gap_table = gap_kind = ""
    if gap is not None:
        from largebatch.compare.kind import diagnose_groups, format_diagnosis
        from largebatch.report.gap import GAP_NOTE, find_group, format_gap_table, gap_rows

        gap_table = format_gap_table(gap_rows(groups, *gap))
        gap_kind = format_diagnosis(diagnose_groups(*(find_group(groups, g) for g in gap)))
    figures = report_figures.draw_all(groups, rows, steps, hessian, target, out)
    from largebatch.report import analyses

    eps_sharpness = analyses.sharpness_rows(groups)
    interpolation = analyses.interpolation_sets(dirs, runs, groups)
    figures += analyses.draw(eps_sharpness, interpolation, out)
    not_drawn = report_figures.not_drawn(
        groups, steps, target, target_asked, [name for name, _ in figures]
    )
    for line in not_drawn:
        print(f"report: {line}", file=sys.stderr)
    seeds = sorted({r.seed for r in runs})
    commits = _commits(runs)
    text = [
        f"# {title or 'Report'}",
        "",
        f"Made on {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} run directories "
        f"({len(groups)} settings; seeds {', '.join(map(str, seeds))}) at git commit "
        f"{', '.join(commits)}. Read from: {', '.join(f'`{d}`' for d in dirs)}.",
        "",
        "## Results",
        "",
        "Over the completed runs of each setting: mean ± sample standard deviation (ddof = 1), "
        "n runs, 95% t-interval of the mean final validation accuracy. Final = the last epoch; "
        "gap = train − validation accuracy (train accuracy measured in eval mode on the whole "
        "training set).",
        "",
        table,
        "",
    ]
    if gap_table:
        text += [f"## Closing the gap: {gap[0]} vs {gap[1]}", "", "### What kind of gap", ""]
        text += [gap_kind, "", "### What each setting closes", "", GAP_NOTE, "", gap_table, ""]
    not_done = [(n, s) for r in rows for n, s in r["not_completed"].items()]
    if not_done:
        text += [
            "Not completed (not averaged in): "
            + ", ".join(f"`{n}` ({s})" for n, s in not_done)
            + ".",
            "",
        ]
    if skipped:
        text += [
            "Left out, unreadable: " + "; ".join(f"`{x.path}` ({x.reason})" for x in skipped) + ".",
            "",
        ]
    if steps:
        fine = any(s["resolution"] == "evals.jsonl" for s in steps)
        resolution = (
            "evaluations every N updates (evals.jsonl) and at each epoch's end"
            if fine
            else "evaluated once per epoch: the resolution is one epoch"
        )
        text += [
            f"## Steps to {100 * target:.1f}% validation accuracy",
            "",
            "First evaluated update at which validation accuracy reaches the target "
            f"({resolution}).",
            "",
            "| setting | B | steps to target | reached |",
            "|---|---|---|---|",
        ]
        for s in steps:
            text.append(
                f"| {s['setting']} | {s['batch']} | {_cell(s['steps'], 0)} | "
                f"{s['steps']['n']}/{s['runs']} |"
            )
        text.append("")
    if hessian:
        rho = spearman(
            [h["lr_over_b"] for h in hessian], [h["top_eigenvalue"]["mean"] for h in hessian]
        )
        text += [
            "## Sharpness: top Hessian eigenvalue (`analysis/hessian.json`)",
            "",
            "| setting | B | lr/B | top eigenvalue | n |",
            "|---|---|---|---|---|",
        ]
        for h in hessian:
            text.append(
                f"| {h['setting']} | {h['batch']} | {h['lr_over_b']:.3g} | "
                f"{_cell(h['top_eigenvalue'], 3)} | {h['top_eigenvalue']['n']} |"
            )
        if not math.isnan(rho):
            text.append(
                f"\nSpearman rank correlation of the top eigenvalue with lr/B over "
                f"settings: {rho:.2f}."
            )
        text.append("")
    text += analyses.markdown(eps_sharpness, interpolation)
    if figures or not_drawn:
        text += ["## Figures", ""]
        text += [f"![{caption}]({name})  \n{caption}\n" for name, caption in figures]
        if not_drawn:
            text += ["Asked for but not drawn, or drawn in part:", ""]
            text += [f"- {line}." for line in not_drawn] + [""]
    text += [
        "## Runs",
        "",
        "| run | setting | seed | status | final val acc (%) |",
        "|---|---|---|---|---|",
    ]
    for g in groups:
        for r in g.runs:
            acc = f"{100 * r.metrics[-1]['val_acc']:.2f}" if r.metrics else "–"
            text.append(f"| `{r.path}` | {g.label} | {r.seed} | {r.status} | {acc} |")
    (out / "report.md").write_text("\n".join(text) + "\n")
    (out / "table.md").write_text(
        table + "\n" + (f"\n{gap_kind}\n\n{gap_table}\n" if gap_table else "")
    )
    result = {
        "rows": rows,
        "target": target,
        "steps_to_target": steps,
        "hessian": hessian,
        "seeds": seeds,
        "commits": commits,
        "runs": [str(r.path) for r in runs],
        "skipped": [{"path": str(x.path), "reason": x.reason} for x in skipped],
        "figures": [name for name, _ in figures],
        "not_drawn": not_drawn,
        "eps_sharpness": eps_sharpness,
        "interpolation": [{k: s[k] for k in ("a", "b", "seeds", "files")} for s in interpolation],
    }
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def check_gap_labels(gap: tuple[str, str]) -> None:
    """``--gap SMALL LARGE`` names two different settings."""
    small, large = gap
    if small == large:
        raise UserError(
            f"--gap '{small}' '{large}' names the same setting twice: give the small-batch "
            "setting's label first, then the large-batch setting's (the labels of the report's "
            "table)"
        )


def check_out(out: Path) -> None:
    """The output folder is a folder, or can become one."""
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file, not a folder; give a folder for the report (new or existing)"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"--out {out}: {parent} is a file, not a folder; choose another --out"
                )
            break


def cmd_report(args: Any) -> int:
    dirs = [Path(d) for d in args.dirs]
    if args.out:
        out = Path(args.out)
    elif len(dirs) == 1 and not (dirs[0] / "config.yaml").is_file():
        out = dirs[0] / "report"
    else:
        out = Path("report")
    if args.gap:
        check_gap_labels(tuple(args.gap))
    check_out(out)
    target = None
    if args.target is not None:
        if not 0 < args.target <= 100:
            raise UserError(
                f"--target is a validation accuracy in percent (0, 100], got {args.target}"
            )
        target = args.target / 100
    result = write_report(dirs, out, target, gap=tuple(args.gap) if args.gap else None)
    print((out / "table.md").read_text(), end="")
    print(
        f"report: {out / 'report.md'} ({len(result['runs'])} runs; figures: "
        f"{', '.join(result['figures']) or 'none'})"
    )
    return 0
