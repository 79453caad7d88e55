"""``largebatch sweep``: a grid of settings x seeds, each a normal run directory, resumable.

The spec (a YAML file, see :mod:`largebatch.experiments.spec`) names a base config, a grid and/or
override sets, and seeds. Each run is trained by ``python -m largebatch train BASE KEY=VALUE ...
--out SWEEP/runs/<name> --resume`` in a child process, so a crash or a kill of one run leaves the
others alone. Run again, a sweep skips completed runs and diverged ones (they would diverge
again), resumes stopped, killed (``running``) and failed ones from their checkpoints, and starts
the rest. ``SWEEP/sweep.json`` (the manifest) records every run's overrides, status and time;
``SWEEP/logs/<name>.log`` its output. On a CPU, ``workers`` processes share the cores (each gets
``train.threads = cores // workers``); on a GPU the default is one run at a time, since small
models in several processes on one GPU run far slower than one after another.

    largebatch sweep configs/sweeps/demo.yaml --quick --workers 2
    largebatch report runs/sweeps/demo-quick
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from largebatch import rundir
from largebatch.errors import UserError
from largebatch.experiments.eta import Eta, Job
from largebatch.experiments.spec import MANIFEST, PlannedRun, SweepSpec, load_spec
from largebatch.plugins import child_env, prepare_config

__all__ = ["MANIFEST", "PlannedRun", "SweepSpec", "cmd_sweep", "load_spec", "run_sweep"]


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return rundir.read_json(run_dir / "summary.json")
    except (OSError, ValueError):
        return None


def _action(run_dir: Path, epochs: int | None) -> str:
    """``skip`` (completed or diverged), ``resume`` or ``start`` for one run directory."""
    summary = _read_summary(run_dir)
    if summary is None:
        return "resume" if (run_dir / "config.yaml").exists() else "start"
    status = summary.get("status")
    if status == "diverged":
        return "skip"
    if status == "completed":
        try:
            stored = rundir.read_config(run_dir).train.epochs
        except (UserError, OSError):
            stored = epochs
        return "skip" if epochs is None or stored == epochs else "resume"  # epochs changed
    return "resume"  # running (killed), stopped, failed


def _epochs(spec: SweepSpec, run: PlannedRun) -> int:
    from largebatch.config import load_config

    return load_config(spec.base, list(run.overrides)).train.epochs


def _check_data(spec: SweepSpec) -> None:
    """Stop before anything runs when a dataset's files are missing: one :class:`DataError`
    (the one ``largebatch train`` would print for every run) instead of every run failing.
    Checks the datasets whose files can be found without reading them; the others are found
    (or not) by the runs themselves. Every config's plugins are imported and its names checked
    first (:func:`largebatch.plugins.prepare_config`)."""
    from largebatch.config import load_config

    seen = set()
    for run in spec.runs:
        cfg = load_config(spec.base, list(run.overrides))
        try:  # its plugins imported here too: a missing one stops the sweep before it starts
            prepare_config(cfg)
        except UserError as e:
            raise UserError(f"{spec.path}: setting {run.setting}: {e}") from None
        data = cfg.data
        key = (data.name, data.root)
        if key in seen:
            continue
        seen.add(key)
        if data.name == "caltech101":
            from largebatch.data.caltech101 import find_source

            find_source(data.root)
        elif data.name in ("mnist", "fashion_mnist"):
            from largebatch.data.idx import find_files

            find_files(data.name, data.root)


def _check_out(out: Path) -> None:
    """Refuse, before anything runs, a sweep folder that is a file, lies under a file, or cannot
    be written: one :class:`UserError` naming the fix."""
    fix = "give --out a new or writable folder"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a sweep folder; {fix}")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is a file, so the folder cannot be made; {fix}")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable; {fix}")


def _lock_sweep(out: Path) -> Any:
    """Hold an OS lock on ``SWEEP/.lock`` for the sweep's life, as a run directory is locked: a
    second sweep into the same folder stops with an error naming the holder; a killed sweep never
    blocks a re-run (:func:`largebatch.rundir.hold_lock`)."""
    return rundir.hold_lock(
        out,
        f"--out {out} is in use by another running sweep (pid {{pid}}); wait for it to finish, "
        "or give this sweep another --out",
    )


def _device_is_cuda(spec: SweepSpec) -> bool:
    from largebatch.config import load_config

    device = load_config(spec.base, list(spec.runs[0].overrides)).train.device
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


class _Children:
    """The sweep's running ``train`` children. SIGTERM or SIGINT to the sweep is forwarded to
    each (they checkpoint and exit 128 + signal) and no further run is started; the children run
    in their own sessions, so a Ctrl-C reaches them once, through the sweep."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Children:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        with self.lock:
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                try:
                    # a second signal is passed on too: the children die without a checkpoint
                    proc.send_signal(signum)
                except OSError:
                    pass
        if first:
            print(
                f"sweep: {signal.Signals(signum).name}: stopping {len(procs)} running run(s) "
                "at a checkpoint; run the sweep again to resume",
                file=sys.stderr,
                flush=True,
            )

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen | None:
        with self.lock:
            if self.signum is not None:
                return None
            proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self.procs.add(proc)
            return proc

    def wait(self, proc: subprocess.Popen) -> int:
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.procs.discard(proc)


def _train(
    spec: SweepSpec,
    run: PlannedRun,
    run_dir: Path,
    log: Path,
    threads: int | None,
    children: _Children | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run in a child process; return its manifest record."""
    overrides = list(run.overrides) + ([f"train.threads={threads}"] if threads else [])
    cmd = [sys.executable, "-m", "largebatch", "train", str(spec.base), *overrides]
    cmd += ["--out", str(run_dir), "--resume"]
    # the child stops at a checkpoint if this sweep dies (kill -9 included) and it is re-parented
    env = dict(child_env(), LARGEBATCH_PARENT_PID=str(os.getpid()))  # + the plugins' folders
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    children = children or _Children()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = children.start(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        if proc is None:  # the sweep was stopped before this run started
            return {"status": "pending", "message": "not started: the sweep was stopped"}
        returncode = children.wait(proc)
    summary = _read_summary(run_dir) or {}
    status = summary.get("status", "failed")
    message = summary.get("message", "")
    if returncode != 0 and status in ("completed", "running"):
        status = "failed"  # a crash after the last summary was written
    if children.signum is not None and returncode in (128 + children.signum, -children.signum):
        status = "stopped"  # stopped by the signal the sweep passed on
    if returncode != 0 and not message:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        message = lines[-1] if lines else f"exit code {returncode}"
    return {
        "status": status,
        "returncode": returncode,
        "message": message,
        "wall_s": round(time.time() - started, 2),
    }


def _thread_args(words: list[str], threads: int | None) -> list[str]:
    """``--threads N`` for an analysis child: the training runs' share of the cores, so the
    analyses keep to the sweep's thread budget; none when the spec's words already say."""
    if not threads or any(w == "--threads" or w.startswith("--threads=") for w in words):
        return []
    return ["--threads", str(threads)]


def _thread_env(threads: int | None) -> dict[str, str]:
    env = child_env()  # PYTHONPATH: the plugins' folders and the working directory
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _analyze(run_dir: Path, words: list[str], log: Path, threads: int | None = None) -> bool:
    cmd = [sys.executable, "-m", "largebatch", "analyze", words[0], str(run_dir), *words[1:]]
    cmd += _thread_args(words, threads)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=_thread_env(threads), check=False
        )
        return proc.returncode == 0


def _job(spec: SweepSpec, run: PlannedRun, run_dir: Path) -> Job:
    """What is left of ``run`` to train, for the ETA: its setting, its epochs left (the config's,
    stretched under ``train.scale_epochs``, less those in its ``metrics.jsonl``) and its
    training examples per epoch where the config says (None: unknown)."""
    from largebatch.config import load_config

    cfg = load_config(spec.base, list(run.overrides))
    epochs = cfg.train.epochs
    if cfg.train.scale_epochs:
        epochs = round(epochs * cfg.train.global_batch_size / cfg.optim.base_batch_size)
    try:
        done = len({r.get("epoch") for r in rundir.read_metrics(run_dir) if isinstance(r, dict)})
    except (OSError, ValueError, UserError):
        done = 0
    data = cfg.data
    examples = data.train_subset or (
        round(data.num_samples * data.train_fraction) if data.name == "mnist1d" else None
    )
    return Job(run.setting, max(0, epochs - done), examples)


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _describe(record: dict[str, Any], run_dir: Path) -> str:
    if record["status"] != "completed":
        return f"{record['status']}: {record.get('message', '')}"
    final = (_read_summary(run_dir) or {}).get("final") or {}
    if not final:
        return "completed"
    return f"val {100 * final['val_acc']:.2f}%  train {100 * final['train_acc']:.2f}%"


def run_sweep(
    spec: SweepSpec, out: Path | None = None, workers: int | None = None, quiet: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Train every run of ``spec`` not yet finished; return the sweep folder and its manifest.

    ``workers`` processes at once (default 1); on a CPU each gets ``cores // workers`` threads.
    """
    out = (
        Path(out)
        if out
        else Path("runs") / "sweeps" / (spec.name + ("-quick" if spec.quick else ""))
    )
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    _check_out(out)
    _check_data(spec)
    cuda = _device_is_cuda(spec)
    workers = workers or 1
    threads = None if cuda or workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    rundir.make_out_folder(out)
    lock = _lock_sweep(out)
    try:
        return _run_locked(spec, out, workers, threads, cuda, quiet)
    finally:
        lock.close()


def _run_locked(
    spec: SweepSpec, out: Path, workers: int, threads: int | None, cuda: bool, quiet: bool
) -> tuple[Path, dict[str, Any]]:
    manifest_path = out / MANIFEST
    old = {}
    if manifest_path.is_file():
        try:
            old = {r["name"]: r for r in rundir.read_json(manifest_path).get("runs", [])}
        except (ValueError, KeyError, TypeError):
            old = {}
    records: dict[str, dict[str, Any]] = {}
    for run in spec.runs:
        records[run.name] = {
            "name": run.name,
            "setting": run.setting,
            "label": run.label,
            "seed": run.seed,
            "dir": f"runs/{run.name}",
            "overrides": list(run.overrides),
            "status": "pending",
            "analyses": old.get(run.name, {}).get("analyses", {}),
        }
    manifest = {
        "name": spec.name,
        "spec": str(spec.path),
        "base": str(spec.base),
        "quick": spec.quick,
        "workers": workers,
        "threads_per_run": threads,
        "device": "cuda" if cuda else "cpu",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": list(records.values()),
    }

    def save() -> None:
        manifest["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        rundir.write_json(manifest_path, manifest)

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    todo = []
    for run in spec.runs:
        run_dir = out / "runs" / run.name
        action = _action(run_dir, _epochs(spec, run))
        if action == "skip":
            summary = _read_summary(run_dir) or {}
            records[run.name].update(
                status=summary.get("status"), message=summary.get("message", "")
            )
        else:
            todo.append((run, action))
    total, done = len(spec.runs), len(spec.runs) - len(todo)
    say(
        f"sweep {spec.name}: {total} runs in {out}; {done} already finished, {len(todo)} to run"
        f" ({workers} at a time{f', {threads} threads each' if threads else ''})"
    )
    save()
    started = time.time()
    # the ETA: each run left weighted by its setting's measured cost (experiments/eta.py)
    jobs = {run.name: _job(spec, run, out / "runs" / run.name) for run, _ in todo}
    eta, begun, ended = Eta(workers), {}, set()

    def train_one(run: PlannedRun, run_dir: Path, log: Path) -> dict[str, Any]:
        begun[run.name] = time.time()
        return _train(spec, run, run_dir, log, threads, children)

    with _Children() as children, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {}
        for run, action in todo:
            records[run.name]["status"] = "running"
            records[run.name]["action"] = action
            run_dir, log = out / "runs" / run.name, out / "logs" / f"{run.name}.log"
            futures[pool.submit(train_one, run, run_dir, log)] = run
        for future in as_completed(futures):
            run = futures[future]
            record = future.result()
            records[run.name].update(record)
            ended.add(run.name)
            if "wall_s" not in record:  # never started: the sweep was stopped
                save()
                continue
            done += 1
            if record["status"] == "completed":  # a diverged or failed run's time says little
                eta.add(jobs[run.name], record["wall_s"])
            now = time.time()
            left = [
                (jobs[r.name], now - begun[r.name] if r.name in begun else 0.0)
                for r, _ in todo
                if r.name not in ended
            ]
            note = " (resumed)" if records[run.name].get("action") == "resume" else ""
            say(
                f"[{done}/{total}] {run.name}: {_describe(record, out / 'runs' / run.name)}"
                f"  {_fmt_s(record['wall_s'])}{note}  {eta.estimate(left).format()}"
            )
            save()
    if children.signum is not None:
        manifest["signal"] = children.signum
        manifest["wall_s"] = round(time.time() - started, 2)
        save()
        return out, manifest
    _analyze_runs(spec, records, out, workers, threads, say, save)
    if spec.interpolate is not None:
        manifest["interpolate"] = _interpolate_pairs(spec, records, out, say, workers, threads)
    manifest["wall_s"] = round(time.time() - started, 2)
    save()
    return out, manifest


def _analyze_runs(
    spec: SweepSpec,
    records: dict[str, Any],
    out: Path,
    workers: int,
    threads: int | None,
    say: Any,
    save: Any,
) -> None:
    """The spec's analyses of every completed run not yet analysed: ``workers`` runs at once,
    each with the training runs' thread count (one run's analyses one after another, in the
    spec's order, into its log)."""

    def analyse(run: PlannedRun, keys: list[str]) -> dict[str, str]:
        log = out / "logs" / f"{run.name}.log"
        return {
            key: "done" if _analyze(out / "runs" / run.name, words[key], log, threads) else "failed"
            for key in keys
        }

    words = {shlex.join(w): w for w in spec.analyze}
    jobs = []
    for run in spec.runs:
        rec = records[run.name]
        keys = [k for k in words if rec["analyses"].get(k) != "done"]
        if rec["status"] == "completed" and keys:
            jobs.append((run, keys))
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(analyse, run, keys): run for run, keys in jobs}
        for future in as_completed(futures):
            run = futures[future]
            for key, result in future.result().items():
                records[run.name]["analyses"][key] = result
                say(f"analyze {key} {run.name}: {result}")
            save()


def _interpolate_pairs(
    spec: SweepSpec,
    records: dict[str, Any],
    out: Path,
    say: Any,
    workers: int = 1,
    threads: int | None = None,
) -> dict[str, str]:
    """``largebatch analyze interpolate A B`` for each seed both settings completed; skips pairs
    already drawn. Returns ``{seed: done | failed}``."""
    assert spec.interpolate is not None
    label_a, label_b = spec.interpolate
    by_seed: dict[int, dict[str, str]] = {}
    for run in spec.runs:
        if run.label in spec.interpolate and records[run.name]["status"] == "completed":
            by_seed.setdefault(run.seed, {})[run.label] = run.name
    result = {}
    jobs = []
    for seed, names in sorted(by_seed.items()):
        if len(names) < 2:
            continue
        target = out / "interpolate" / f"seed={seed}"
        if (target / "interpolate.json").exists():
            result[str(seed)] = "done"
            continue
        cmd = [sys.executable, "-m", "largebatch", "analyze", "interpolate"]
        cmd += [str(out / "runs" / names[label_a]), str(out / "runs" / names[label_b])]
        cmd += ["--out", str(target), *_thread_args([], threads)]
        jobs.append((seed, cmd, out / "logs" / f"interpolate-seed={seed}.log"))

    def draw(cmd: list[str], log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            return subprocess.run(cmd, stdout=f, stderr=f, env=_thread_env(threads)).returncode

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(draw, cmd, log): seed for seed, cmd, log in jobs}
        for future in as_completed(futures):
            seed = futures[future]
            result[str(seed)] = "done" if future.result() == 0 else "failed"
            say(f"interpolate {label_a} -> {label_b}, seed {seed}: {result[str(seed)]}")
    return dict(sorted(result.items(), key=lambda kv: int(kv[0])))


def sweep_failures(manifest: dict[str, Any]) -> list[str]:
    """Names of the runs (and analyses) that did not complete."""
    bad = [r["name"] for r in manifest["runs"] if r["status"] != "completed"]
    bad += [
        f"{r['name']} ({k})"
        for r in manifest["runs"]
        for k, v in r["analyses"].items()
        if v != "done"
    ]
    return bad


def cmd_sweep(args: Any) -> int:
    from largebatch.presets import resolve_in

    path = resolve_in(args.spec, "sweeps", "sweep")  # a file, or a preset's name (demo)
    spec = load_spec(path, quick=args.quick, seeds=args.seeds, overrides=args.overrides)
    out, manifest = run_sweep(spec, Path(args.out) if args.out else None, workers=args.workers)
    if manifest.get("signal"):
        stopped = [r["name"] for r in manifest["runs"] if r["status"] == "stopped"]
        print(
            f"sweep {spec.name}: stopped by signal {manifest['signal']}; "
            f"{len(stopped)} run(s) checkpointed ({', '.join(stopped) or 'none'}); "
            f"continue with the same command (manifest {out / MANIFEST})",
            file=sys.stderr,
        )
        return 128 + int(manifest["signal"])
    counts: dict[str, int] = {}
    for r in manifest["runs"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(
        f"sweep {spec.name}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"; manifest {out / MANIFEST}"
    )
    print(f"report: largebatch report {out}")
    bad = sweep_failures(manifest)
    if bad:
        print(f"{len(bad)} not completed: {', '.join(bad)}; see {out / 'logs'}", file=sys.stderr)
        return 1
    return 0
