"""``largebatch compare``: pick the fix for a large batch's gap without flattering it.

Four stages, each a set of ordinary run directories in one folder (a sweep: resumable, finished
runs are skipped, so running the command again continues where it stopped):

1. **diagnose**: the small and the large batch on the screen seeds; the gap's kind
   (:mod:`largebatch.compare.kind`) picks the candidate families (``families: auto``):
   regularisers for a generalization gap, optimisation fixes for a fit gap, both for both.
2. **screen**: every variant (grid point) of every candidate at the large batch, on the same
   screen seeds. Score of a variant: ``mean_s [a_F(s) - a_L(s)]`` (final validation accuracy,
   points, paired by seed). Each candidate keeps its best variant.
3. **promote**: the ``promote`` best candidates (their best variants), the small and the large
   batch on the promote seeds; the fix is the candidate with the best score over screen and
   promote seeds together. Every choice so far used only these seeds.
4. **confirm**: the chosen fix, the small and the large batch, and the fix at the small batch,
   on fresh seeds that played no part in any choice. The report gives, on those seeds only, the
   fraction of the gap closed with its paired 95% bootstrap interval, the cost (time per epoch
   against the large batch, forward-backward passes per update), the train accuracies, and how
   much of the batch effect is left when both batches get the fix.

A variant with a failed or diverged run is out of the choice (and said so). Candidates costlier
than ``max_passes`` passes per update are left out before anything runs.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from largebatch import rundir
from largebatch.compare.candidates import Variant, default_candidates, resolve
from largebatch.compare.kind import GapDiagnosis, diagnose
from largebatch.compare.spec import CompareSpec
from largebatch.config import load_config
from largebatch.errors import UserError
from largebatch.experiments.spec import PlannedRun, SweepSpec, format_value
from largebatch.experiments.sweep import run_sweep

SMALL, LARGE = "small", "large"


class Stopped(Exception):
    """SIGTERM / SIGINT reached the sweep of a stage: its runs were checkpointed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True)
class Setting:
    key: str
    """Folder-safe name (run names are ``KEY,seed=S``)."""
    label: str
    overrides: dict[str, Any]
    variant: Variant | None = None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-=" else "-" for c in text).strip("-")


class Protocol:
    """The stages of one comparison, over the run directories in ``out``."""

    def __init__(self, spec: CompareSpec, out: Path, workers: int = 1, say: Any = print) -> None:
        self.spec, self.out, self.workers, self.say = spec, out, workers, say
        base = load_config(spec.base, self._override_list(spec.small))
        large = load_config(spec.base, self._override_list(spec.large))
        self.small_batch = base.train.global_batch_size
        self.large_batch = large.train.global_batch_size
        if self.small_batch >= self.large_batch:
            raise UserError(
                f"{spec.path}: small batch ({self.small_batch}) must be smaller than the large "
                f"batch ({self.large_batch})"
            )
        self.small = Setting(SMALL, f"small (B={self.small_batch})", spec.small)
        self.large = Setting(LARGE, f"large (B={self.large_batch})", spec.large)
        epochs = large.train.epochs
        candidates = spec.candidates
        if candidates is None:
            batchnorm = large.model.batchnorm and large.model.name != "mlp"
            candidates = default_candidates(batchnorm)
        self.candidates = [resolve(c, self.small_batch, large.optim.lr, epochs) for c in candidates]
        self.runs: dict[str, PlannedRun] = {}
        self.variants = {
            v.label: v for c in self.candidates for v in c.variants() if v.passes <= spec.max_passes
        }
        for v in self.variants.values():  # every variant's config is valid before any run
            self._check(self._variant_setting(v), spec.screen_seeds[0])

    # ------------------------------------------------------------------ planning and running
    def _override_list(self, setting: dict[str, Any]) -> list[str]:
        merged = self.spec.overrides | setting
        return [f"{k}={format_value(v)}" for k, v in merged.items()] + list(self.spec.extra)

    def _seed_overrides(self, seed: int) -> list[str]:
        return [f"{k}={seed}" for k in self.spec.seed_keys]

    def _check(self, setting: Setting, seed: int) -> None:
        try:
            load_config(
                self.spec.base, self._override_list(setting.overrides) + self._seed_overrides(seed)
            )
        except UserError as e:
            raise UserError(f"{self.spec.path}: {setting.label}: {e}") from None

    def _variant_setting(self, v: Variant) -> Setting:
        return Setting(_slug(v.label), v.label, self.spec.large | v.overrides, v)

    def _at_small(self, v: Variant) -> Setting:
        """The same fix at the small batch. A micro-batch as large as the small batch is the
        whole batch there: m-SAM becomes SAM, the penalty uses the whole batch."""
        overrides = self.spec.small | v.overrides
        micro = overrides.get("train.micro_batch_size")
        if micro is not None and micro >= self.small_batch:
            overrides.pop("train.micro_batch_size")
            if overrides.get("optim.sam") == "msam":
                overrides["optim.sam"] = "sam"
        if (overrides.get("model.ghost_batch_size") or 0) >= self.small_batch:
            overrides.pop("model.ghost_batch_size")
        return Setting("small+" + _slug(v.label), f"small + {v.label}", overrides, v)

    def plan(self, setting: Setting, seeds: list[int]) -> None:
        for seed in seeds:
            name = f"{setting.key},seed={seed}"
            overrides = self._override_list(setting.overrides) + self._seed_overrides(seed)
            self.runs[name] = PlannedRun(name, setting.key, setting.label, seed, tuple(overrides))

    def run(self, stage: str) -> None:
        self.say(f"== {stage}")
        spec = SweepSpec(self.spec.path, self.spec.name, self.spec.base, list(self.runs.values()))
        _, manifest = run_sweep(spec, self.out, workers=self.workers)
        if manifest.get("signal"):
            raise Stopped(int(manifest["signal"]))

    # ------------------------------------------------------------------------ reading results
    def final(self, setting: Setting, seeds: list[int]) -> dict[int, dict[str, float]]:
        """``{seed: last metrics line}`` of the completed runs of ``setting``."""
        out = {}
        for seed in seeds:
            run_dir = self.out / "runs" / f"{setting.key},seed={seed}"
            try:
                status = rundir.read_json(run_dir / "summary.json").get("status")
            except (OSError, ValueError):
                continue
            metrics = rundir.read_metrics(run_dir) if status == "completed" else []
            if metrics:
                times = [m["epoch_time_s"] for m in metrics if "epoch_time_s" in m]
                out[seed] = {**metrics[-1], "mean_epoch_time_s": sum(times) / max(1, len(times))}
        return out

    def accuracies(self, setting: Setting, seeds: list[int]) -> dict[int, float]:
        return {s: 100 * m["val_acc"] for s, m in self.final(setting, seeds).items()}

    def score(self, setting: Setting, seeds: list[int]) -> tuple[float, int]:
        """Mean paired gain over the large batch (points) and the seeds it rests on; NaN when
        any of the setting's runs on ``seeds`` did not complete."""
        fix, large = self.accuracies(setting, seeds), self.accuracies(self.large, seeds)
        if len(fix) < len(seeds):
            return float("nan"), len(fix)
        common = [s for s in seeds if s in large]
        if not common:
            return float("nan"), 0
        return sum(fix[s] - large[s] for s in common) / len(common), len(common)

    def time_ratio(self, settings: list[Setting], seeds: list[int]) -> float:
        """Mean time per epoch of the runs of ``settings`` over the large batch's, on ``seeds``."""
        fix = [m["mean_epoch_time_s"] for st in settings for m in self.final(st, seeds).values()]
        large = [m["mean_epoch_time_s"] for m in self.final(self.large, seeds).values()]
        return _mean(fix) / _mean(large) if fix and large else float("nan")

    def candidate_time(self, variants: list[Variant], seeds: list[int]) -> dict[str, float]:
        """Each variant's candidate's time ratio, over all the candidate's variants' runs: its
        variants cost the same per update, so pooling them halves the timing noise of a
        machine shared by several runs."""
        out = {}
        for name in dict.fromkeys(v.candidate for v in variants):
            mine = [self._variant_setting(v) for v in variants if v.candidate == name]
            out[name] = self.time_ratio(mine, seeds)
        return {v.label: out[v.candidate] for v in variants}

    def diagnosis(self, seeds: list[int]) -> GapDiagnosis:
        small, large = self.final(self.small, seeds), self.final(self.large, seeds)
        return diagnose(
            {s: (m["train_acc"], m["val_acc"]) for s, m in small.items()},
            {s: (m["train_acc"], m["val_acc"]) for s, m in large.items()},
        )

    # ---------------------------------------------------------------------------- the stages
    def families(self, kind: GapDiagnosis) -> tuple[str, ...]:
        if self.spec.families == "all":
            return ("regulariser", "optimisation")
        if self.spec.families != "auto":
            return (self.spec.families,)
        # No distinguishable gap on the screen seeds: try both families rather than nothing.
        return kind.candidates() or ("regulariser", "optimisation")

    def execute(self) -> dict[str, Any]:
        spec = self.spec
        selection = spec.screen_seeds + spec.promote_seeds
        self.plan(self.small, spec.screen_seeds)
        self.plan(self.large, spec.screen_seeds)
        self.run("diagnose: small and large batch on the screen seeds")
        kind = self.diagnosis(spec.screen_seeds)
        self.say(f"gap: {kind.kind} ({kind.reason})")
        families = self.families(kind)
        variants = [v for v in self.variants.values() if self._family(v) in families]
        if not variants:
            raise UserError(f"{spec.path}: no candidate of the families {', '.join(families)}")
        for v in variants:
            self.plan(self._variant_setting(v), spec.screen_seeds)
        self.run(f"screen: {len(variants)} variants on seeds {_seeds(spec.screen_seeds)}")
        screen = {
            v.label: self.score(self._variant_setting(v), spec.screen_seeds) for v in variants
        }
        times = self.candidate_time(variants, spec.screen_seeds)
        best: dict[str, Variant] = {}
        for v in variants:
            value = screen[v.label][0]
            if times[v.label] > spec.max_time:
                continue  # over the time budget: shown, never promoted
            kept = best.get(v.candidate)
            if not math.isnan(value) and (kept is None or value > screen[kept.label][0]):
                best[v.candidate] = v
        if not best:
            over = [v.label for v in variants if times[v.label] > spec.max_time]
            if over:
                raise UserError(
                    f"no candidate variant completed within the time budget (max_time="
                    f"{spec.max_time:g}x the large batch's time per epoch; over it: "
                    f"{', '.join(over)}); raise max_time in the spec or add cheaper candidates"
                )
            raise UserError("every candidate variant failed on the screen seeds; see the logs")
        ranked = sorted(best.values(), key=lambda v: (-screen[v.label][0], v.passes))
        promoted = ranked[: spec.promote]
        if spec.promote_seeds:
            self.plan(self.small, spec.promote_seeds)
            self.plan(self.large, spec.promote_seeds)
            for v in promoted:
                self.plan(self._variant_setting(v), spec.promote_seeds)
            self.run(f"promote: {len(promoted)} candidates on seeds {_seeds(spec.promote_seeds)}")
        promote = {v.label: self.score(self._variant_setting(v), selection) for v in promoted}
        usable = [v for v in promoted if not math.isnan(promote[v.label][0])]
        if not usable:
            raise UserError("every promoted candidate failed on the promote seeds; see the logs")
        chosen = max(usable, key=lambda v: (promote[v.label][0], -v.passes))
        fix, fix_small = self._variant_setting(chosen), self._at_small(chosen)
        for setting in (self.small, self.large, fix, fix_small):
            self.plan(setting, spec.confirm_seeds)
        self.run(f"confirm: {chosen.label} on fresh seeds {_seeds(spec.confirm_seeds)}")
        return self._record(
            kind, families, variants, screen, times, best, promoted, promote, chosen
        )

    def _family(self, v: Variant) -> str:
        return next(c.family for c in self.candidates if c.name == v.candidate)

    def _record(self, kind, families, variants, screen, times, best, promoted, promote, chosen):
        spec = self.spec
        max_time = spec.max_time
        fix, fix_small = self._variant_setting(chosen), self._at_small(chosen)
        confirm = spec.confirm_seeds
        large_final = self.final(self.large, spec.screen_seeds)
        large_time = _mean([m["mean_epoch_time_s"] for m in large_final.values()])

        def stats(setting: Setting, seeds: list[int]) -> dict[str, Any]:
            final = self.final(setting, seeds)
            return {
                "n": len(final),
                "val_acc": _mean([100 * m["val_acc"] for m in final.values()]),
                "train_acc": _mean([100 * m["train_acc"] for m in final.values()]),
                "epoch_time_s": _mean([m["mean_epoch_time_s"] for m in final.values()]),
            }

        return {
            "name": spec.name,
            "spec": str(spec.path),
            "quick": spec.quick,
            "small": self.small.label,
            "large": self.large.label,
            "seeds": {
                "screen": spec.screen_seeds,
                "promote": spec.promote_seeds,
                "confirm": confirm,
            },
            "diagnosis": _diagnosis_record(kind),
            "diagnosis_confirm": _diagnosis_record(self.diagnosis(confirm)),
            "families": list(families),
            "max_time": max_time,
            "screen": [
                {
                    "variant": v.label,
                    "candidate": v.candidate,
                    "family": self._family(v),
                    "passes": v.passes,
                    "score": screen[v.label][0],
                    "n": screen[v.label][1],
                    "best_of_candidate": best.get(v.candidate) is v,
                    "over_budget": times[v.label] > spec.max_time,
                    "candidate_time_vs_large": times[v.label],
                    **stats(self._variant_setting(v), spec.screen_seeds),
                    "time_vs_large": stats(self._variant_setting(v), spec.screen_seeds)[
                        "epoch_time_s"
                    ]
                    / large_time
                    if large_time
                    else float("nan"),
                }
                for v in variants
            ],
            "promote": [
                {"variant": v.label, "score": promote[v.label][0], "n": promote[v.label][1]}
                for v in promoted
            ],
            "chosen": {
                "variant": chosen.label,
                "overrides": chosen.overrides,
                "passes": chosen.passes,
                "at_small": fix_small.overrides,
            },
            "confirm": {
                "small": stats(self.small, confirm),
                "large": stats(self.large, confirm),
                "fix": stats(fix, confirm),
                "fix_at_small": stats(fix_small, confirm),
                "acc": {
                    "small": self.accuracies(self.small, confirm),
                    "large": self.accuracies(self.large, confirm),
                    "fix": self.accuracies(fix, confirm),
                    "fix_at_small": self.accuracies(fix_small, confirm),
                },
            },
        }


def _diagnosis_record(d: GapDiagnosis) -> dict[str, Any]:
    def est(e) -> dict[str, float]:
        return {"value": e.value, "low": e.low, "high": e.high, "n": e.n}

    return {
        "kind": d.kind,
        "val_gap": est(d.val_gap),
        "fit_gap": est(d.fit_gap),
        "generalization_gap": est(d.generalization_gap),
        "train_small": d.train_small,
        "train_large": d.train_large,
        "reason": d.reason,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def run_protocol(
    spec: CompareSpec, out: Path | None = None, workers: int = 1, say: Any = print
) -> tuple[Path, dict[str, Any]]:
    """Run (or continue) the protocol; write ``protocol.json`` and ``protocol.md`` in ``out``."""
    from largebatch.compare.summary import write_summary

    out = (
        Path(out)
        if out
        else Path("runs") / "compare" / (spec.name + ("-quick" if spec.quick else ""))
    )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    protocol = Protocol(spec, out, workers, say)  # checks every variant's config first
    out.mkdir(parents=True, exist_ok=True)
    record = protocol.execute()
    (out / "protocol.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    text = write_summary(record, out)
    say(text)
    return out, record


def _spec_path(name: str) -> Path:
    """A spec file, or a comparison preset's name (``demo``: ``configs/compare/demo.yaml``)."""
    from largebatch.presets import list_presets, resolve_preset

    if Path(name).is_file() or "/" in name or name.endswith(".yaml"):
        return Path(name) if Path(name).is_file() else resolve_preset(name)
    try:
        return resolve_preset(f"compare/{name}")
    except UserError:
        names = ", ".join(list_presets("compare")) or "(none found)"
        raise UserError(
            f"'{name}' is neither a file nor a comparison preset; presets: {names}"
        ) from None


def cmd_compare(args: Any) -> int:
    from largebatch.compare.spec import load_compare_spec

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    spec = load_compare_spec(_spec_path(args.spec), quick=args.quick, overrides=args.overrides)
    try:
        out, _ = run_protocol(spec, Path(args.out) if args.out else None, args.workers or 1)
    except Stopped as stop:
        print(
            "compare: stopped by a signal; its runs were checkpointed: run the same command to "
            "continue",
            file=sys.stderr,
        )
        return 128 + stop.signum
    print(f"protocol: {out / 'protocol.md'}; runs: largebatch report {out}")
    return 0
