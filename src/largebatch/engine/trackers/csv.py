"""CSV files in ``RUN/csv/`` (``train.trackers: [csv]``; no dependency), for spreadsheets and
tools that do not read JSON lines:

- ``steps.csv``, ``metrics.csv``, ``evals.csv``: one row per line of ``steps.jsonl``,
  ``metrics.jsonl`` and ``evals.jsonl``, the same keys as columns (a header row first, in the
  records' key order) and the same numbers (``repr`` of each float: it reads back exactly;
  ``nan`` where the record holds NaN);
- ``hparams.csv``: ``key,value`` rows of the resolved config (``optim.lr,0.05``; lists and
  None as JSON).

On ``--resume`` the rows past the checkpoint's step are dropped (a run killed without a final
checkpoint may have written some), as the records are, so a stopped and resumed run's files equal
the uninterrupted run's (up to the timing columns, ``examples_per_s`` and ``epoch_time_s``, which
differ between any two runs).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from largebatch.checkpoint import atomic_write_bytes
from largebatch.engine.trackers.base import Tracker, as_text, flat_config

DIRNAME = "csv"
FILES = {"train": "steps.csv", "epoch": "metrics.csv", "eval": "evals.csv"}
HPARAMS = "hparams.csv"


class CsvTracker(Tracker):
    name = "csv"

    def __init__(self) -> None:
        self.folder = Path()
        self.columns: dict[str, list[str]] = {}

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        self.folder = Path(run_dir) / DIRNAME
        self.folder.mkdir(parents=True, exist_ok=True)
        for kind, name in FILES.items():
            path = self.folder / name
            columns, rows = read_csv(path)
            kept = [row for row in rows if _step(row) <= start_step]
            if kept:
                _rewrite(path, columns, kept)
                self.columns[kind] = columns
            else:
                path.unlink(missing_ok=True)
        params = [{"key": k, "value": as_text(v)} for k, v in flat_config(config).items()]
        _rewrite(self.folder / HPARAMS, ["key", "value"], params)

    def log(self, kind: str, row: dict[str, Any], step: int) -> None:
        path = self.folder / FILES[kind]
        columns = self.columns.get(kind)
        if columns is None:
            columns = self.columns[kind] = list(row)
            _rewrite(path, columns, [])
        elif any(key not in columns for key in row):  # a key the earlier rows lack: new column
            columns += [key for key in row if key not in columns]
            _rewrite(path, columns, read_csv(path)[1])
        with open(path, "a", newline="") as f:
            _writer(f, columns).writerow(row)
            f.flush()

    def finish(self, failed: bool) -> None:
        pass  # every row is in its file already


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the whole rows of a file this tracker wrote (a row cut short by a kill is
    left out); no file: no rows."""
    if not Path(path).is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for row in reader if None not in row.values() and None not in row]
        return list(reader.fieldnames or []), rows


def _step(row: dict[str, str]) -> float:
    try:
        return int(row.get("step", ""))
    except ValueError:
        return float("inf")  # not a row of ours: dropped


def _writer(f: Any, columns: list[str]) -> csv.DictWriter:
    return csv.DictWriter(f, fieldnames=columns, lineterminator="\n")


def _rewrite(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = _writer(out, columns)
    writer.writeheader()
    writer.writerows(rows)
    data = out.getvalue().encode()
    atomic_write_bytes(path, lambda f: f.write(data))
