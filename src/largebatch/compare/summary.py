"""The comparison protocol's report (``protocol.md``): what was chosen on which seeds, and what
the chosen fix does on fresh seeds.

On the confirm seeds only, paired by seed (``a_X(s)`` final validation accuracy, points)::

    gap        = mean_s [a_small(s) - a_large(s)]
    gain       = mean_s [a_fix(s) - a_large(s)]
    closed     = gain / gap                                  (1 = the whole gap)
    left       = mean_s [a_small+fix(s) - a_fix(s)]          (the batch effect left when both
                                                              batches get the fix)

each with its 95% percentile bootstrap interval over seeds (:mod:`largebatch.report.gap`). The
target of a fix: ``closed >= 90%`` with the interval's lower end above 50%, at no more than 1.5x
the large batch's time per epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from largebatch.report.gap import gap_closed, paired_difference

TARGET_CLOSED, TARGET_LOW, TARGET_COST = 0.9, 0.5, 1.5


def _keys(acc: dict[Any, float]) -> dict[int, float]:
    return {int(k): v for k, v in acc.items()}


def _num(x: float, fmt: str = ".2f") -> str:
    return f"{x:{fmt}}" if isinstance(x, int | float) and math.isfinite(x) else "–"


def confirm_estimates(record: dict[str, Any]) -> dict[str, Any]:
    acc = {k: _keys(v) for k, v in record["confirm"]["acc"].items()}
    fix_time = record["confirm"]["fix"]["epoch_time_s"]
    large_time = record["confirm"]["large"]["epoch_time_s"]
    return {
        "gap": paired_difference(acc["small"], acc["large"]),
        "gain": paired_difference(acc["fix"], acc["large"]),
        "closed": gap_closed(acc["small"], acc["large"], acc["fix"]),
        "left": paired_difference(acc["fix_at_small"], acc["fix"]),
        "small_gain": paired_difference(acc["fix_at_small"], acc["small"]),
        "cost": fix_time / large_time if large_time else float("nan"),
    }


def verdict(est: dict[str, Any]) -> str:
    closed, cost = est["closed"], est["cost"]
    if closed.n == 0:
        return "no confirm runs completed"
    meets = closed.value >= TARGET_CLOSED and closed.low > TARGET_LOW and cost <= TARGET_COST
    if meets:
        return (
            f"**meets the target** (>= 90% of the gap closed, interval above 50%, "
            f"{cost:.2f}x the time per epoch)"
        )
    why = []
    if closed.value < TARGET_CLOSED:
        why.append(f"closes {100 * closed.value:.0f}% (< 90%)")
    if not closed.low > TARGET_LOW:
        why.append(f"interval's lower end {100 * closed.low:.0f}% (not above 50%)")
    if not cost <= TARGET_COST:
        why.append(f"{cost:.2f}x the time per epoch (> 1.5x)")
    return "**does not meet the target**: " + "; ".join(why)


def write_summary(record: dict[str, Any], out: Path) -> str:
    seeds = record["seeds"]
    est = confirm_estimates(record)
    c = record["confirm"]
    d, dc = record["diagnosis"], record["diagnosis_confirm"]
    lines = [
        f"# Comparison: {record['name']}"
        + (" (quick: too few seeds for a verdict)" if record["quick"] else ""),
        "",
        f"Small batch: {record['small']}; large batch: {record['large']}. Seeds: screen "
        f"{seeds['screen']}, promote {seeds['promote']} (the choice used only these), confirm "
        f"{seeds['confirm']} (fresh: the numbers below).",
        "",
        "## The gap",
        "",
        f"On the screen seeds: **{d['kind']}** ({d['reason']}); candidate families tried: "
        f"{', '.join(record['families'])}.",
        f"On the confirm seeds: **{dc['kind']}** ({dc['reason']}).",
        "",
        "## Chosen fix, confirmed on fresh seeds",
        "",
        f"**{record['chosen']['variant']}** ({record['chosen']['passes']:g} forward-backward "
        f"passes per update): {verdict(est)}.",
        "",
        "| quantity (confirm seeds, paired) | value [95% interval] |",
        "|---|---|",
        f"| gap: small − large (points) | {est['gap'].format()} |",
        f"| fix − large (points) | {est['gain'].format()} |",
        f"| fraction of the gap closed (%) | {est['closed'].format(100, 0)} |",
        f"| time per epoch vs large | {_num(est['cost'])}x |",
        f"| fix at the small batch − small (points) | {est['small_gain'].format()} |",
        f"| batch effect left when both get the fix: small+fix − large+fix (points) | "
        f"{est['left'].format()} |",
        "",
        "| setting (confirm seeds) | n | val acc (%) | train acc (%) | s/epoch |",
        "|---|---|---|---|---|",
    ]
    for key, name in (
        ("small", record["small"]),
        ("large", record["large"]),
        ("fix", f"large + {record['chosen']['variant']}"),
        ("fix_at_small", f"small + {record['chosen']['variant']}"),
    ):
        s = c[key]
        lines.append(
            f"| {name} | {s['n']} | {_num(s['val_acc'])} | {_num(s['train_acc'])} | "
            f"{_num(s['epoch_time_s'], '.3f')} |"
        )
    lines += [
        "",
        "## How it was chosen",
        "",
        f"Screen (seeds {seeds['screen']}): every variant at the large batch; score = mean paired "
        "gain over the large batch (points). ✓ = the candidate's best variant within the time "
        f"budget ({record['max_time']:g}x the large batch's time per epoch, measured here and "
        "pooled over the candidate's variants).",
        "",
        "| variant | family | passes | n | gain (points) | val acc (%) | train acc (%) "
        "| time/epoch vs large (candidate) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        record["screen"], key=lambda r: -r["score"] if math.isfinite(r["score"]) else 1e9
    ):
        mark = " ✓" if r["best_of_candidate"] else ""
        mark += " (over the time budget)" if r.get("over_budget") else ""
        failed = "" if math.isfinite(r["score"]) else " (failed: out)"
        lines.append(
            f"| {r['variant']}{mark}{failed} | {r['family']} | {r['passes']:g} | {r['n']} | "
            f"{_num(r['score'])} | {_num(r['val_acc'])} | {_num(r['train_acc'])} | "
            f"{_num(r.get('candidate_time_vs_large', r['time_vs_large']))}x |"
        )
    lines += [
        "",
        f"Promote (score over seeds {seeds['screen'] + seeds['promote']}):",
        "",
        "| candidate | n | gain (points) |",
        "|---|---|---|",
    ]
    for r in record["promote"]:
        lines.append(f"| {r['variant']} | {r['n']} | {_num(r['score'])} |")
    text = "\n".join(lines) + "\n"
    (out / "protocol.md").write_text(text)
    return text
