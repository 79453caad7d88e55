"""train.trackers: CSV, TensorBoard, W&B (offline) and MLflow (file store) get the records'
numbers and the resolved config; --resume continues them; a wrong name or a missing package is
one error line (exit 2) before anything runs."""

from __future__ import annotations

import csv
import doctest
import importlib
import importlib.util
import json
import math
import os
import signal
import struct
from pathlib import Path

import pytest

from largebatch import config, rundir
from largebatch.cli import main
from largebatch.config import ConfigError, load_config
from largebatch.engine import trackers, train
from largebatch.engine.trackers import csv as csv_tracker
from largebatch.errors import UserError

TIMING = {"examples_per_s", "epoch_time_s"}
"""Columns that differ between any two runs."""


def _over(tiny, *extra: str) -> list[str]:
    return [*tiny, "train.log_every_steps=3", "train.eval_every_steps=5", *extra]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-12)


def _records(run: Path) -> dict[str, list[dict]]:
    return {kind: rundir.read_jsonl(run / name) for kind, name in trackers.base.KINDS.items()}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_registry_names_are_the_configs_and_docstrings_run():
    assert tuple(trackers.TRACKERS) == config.TRACKERS
    for name in ("largebatch.engine.trackers", "largebatch.engine.trackers.base"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.attempted > 0 and result.failed == 0, name


def test_csv_rows_are_the_records(tmp_path, tiny_mnist1d_overrides):
    run = tmp_path / "run"
    cfg = load_config(None, _over(tiny_mnist1d_overrides, "train.trackers=[csv]"))
    assert train(cfg, run).status == "completed"
    records = _records(run)
    assert all(records.values())  # steps, metrics and evals all have rows
    for kind, name in csv_tracker.FILES.items():
        columns, rows = _read_csv(run / "csv" / name)
        assert columns == list(records[kind][0]), kind  # the records' keys, in their order
        assert len(rows) == len(records[kind]), kind
        for row, record in zip(rows, records[kind], strict=True):
            assert row.keys() == record.keys()
            for key, value in record.items():
                assert _same(float(row[key]), value), (kind, key)
    columns, rows = _read_csv(run / "csv" / "hparams.csv")
    hparams = {r["key"]: r["value"] for r in rows}
    assert columns == ["key", "value"] and float(hparams["optim.lr"]) == 0.05
    assert hparams["model.hidden"] == "[32, 32]" and hparams["train.trackers"] == '["csv"]'
    assert hparams["train.drop_last"] == "true" and hparams["train.threads"] == "null"
    assert not any((run / d).exists() for d in ("tensorboard", "wandb", "mlruns"))


def test_csv_after_a_stop_and_resume_equals_the_uninterrupted_run(
    tmp_path, tiny_mnist1d_overrides, monkeypatch
):
    over = _over(tiny_mnist1d_overrides, "train.trackers=[csv]")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(load_config(None, over), whole).status == "completed"

    # SIGTERM mid-epoch 1 (after the read at update 3): a checkpoint where the run stands
    real_log = csv_tracker.CsvTracker.log

    def log_then_stop(self, kind, row, step):
        real_log(self, kind, row, step)
        if kind == "train" and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(csv_tracker.CsvTracker, "log", log_then_stop)
    stopped = train(load_config(None, over), resumed)
    monkeypatch.setattr(csv_tracker.CsvTracker, "log", real_log)
    assert stopped.status == "stopped" and 3 <= stopped.summary["step"] < 7
    # what a kill after the checkpoint leaves: rows past it, one cut short
    with open(resumed / "csv" / "steps.csv", "a") as f:
        f.write("100,2,9.5,0.05,0.0,1.0,1.0\n101,2")
    assert train(load_config(None, over), resumed, resume=True).status == "completed"

    for kind, name in csv_tracker.FILES.items():
        columns, rows = _read_csv(resumed / "csv" / name)
        whole_columns, whole_rows = _read_csv(whole / "csv" / name)
        assert columns == whole_columns, name
        keep = [c for c in columns if c not in TIMING]
        assert [[r[c] for c in keep] for r in rows] == [[r[c] for c in keep] for r in whole_rows]
        records = _records(resumed)[kind]  # and the resumed run's own records
        assert [int(r["step"]) for r in rows] == [r["step"] for r in records], name


def test_tensorboard_gets_hparams_and_evals_in_one_run_folder(tmp_path, tiny_mnist1d_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    # the alias and the list together: one TensorBoard tracker
    over = _over(tiny_mnist1d_overrides, "train.trackers=[tensorboard]", "train.tensorboard=true")
    run = tmp_path / "run"
    assert train(load_config(None, over), run).status == "completed"
    board = run / "tensorboard"
    assert [p for p in board.iterdir() if p.is_dir()] == []  # no extra run folder
    assert len(list(board.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(board))
    events.Reload()

    evals = rundir.read_jsonl(run / rundir.EVALS)
    assert [r["step"] for r in evals] == [5, 10]
    for key in ("val_loss", "val_acc"):
        logged = {e.step: e.value for e in events.Scalars(f"eval/{key}")}
        assert logged == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in evals}, key

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(0.05)
    assert hparams["train.global_batch_size"].number_value == 64
    assert hparams["model.hidden"].string_value == "[32, 32]"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert "epoch/val_acc" in metrics and "epoch/val_acc" in events.Tags()["scalars"]


def _wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks of chunks,
    each ``crc32 (4) | length (2) | type (1)``; full = 1, first = 2, middle = 3, last = 4)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, out, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def test_wandb_offline_run_holds_config_and_history_and_resumes_its_id(
    tmp_path, tiny_mnist1d_overrides, monkeypatch
):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    over = _over(tiny_mnist1d_overrides, "train.trackers=[wandb]")
    run = tmp_path / "run"
    assert train(load_config(None, over), run, stop_after_epochs=1).status == "stopped"
    assert train(load_config(None, over), run, resume=True).status == "completed"

    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders)
    history: dict[int, dict] = {}
    for folder in folders:
        for record in _wandb_records(folder / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == run_id
                settings = {i.key: json.loads(i.value_json) for i in record.run.config.update}
                assert settings["optim.lr"] == 0.05 and settings["model.hidden"] == "[32, 32]"
            elif kind == "history":
                items = record.history.item
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                history.setdefault(record.history.step.num, {}).update(row)
    records = _records(run)
    for kind, rows in records.items():
        for record in rows:
            logged = history[record["step"]]
            for key, value in trackers.base.scalars(record).items():
                assert _same(float(logged[f"{kind}/{key}"]), value), (kind, key)
    assert sorted(s for s, row in history.items() if "train/loss" in row) == [
        r["step"] for r in records["train"]
    ]


def test_mlflow_file_store_run_resumes_with_params_and_metrics(
    tmp_path, tiny_mnist1d_overrides, monkeypatch
):
    pytest.importorskip("mlflow")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    over = _over(tiny_mnist1d_overrides, "train.trackers=[mlflow]")
    run = tmp_path / "run"
    assert train(load_config(None, over), run, stop_after_epochs=1).status == "stopped"
    longer = load_config(None, [*over, "train.epochs=3"])  # a key --resume may change
    assert train(longer, run, resume=True).status == "completed"
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # set for the run only

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    (experiment,) = [e for e in client.search_experiments() if e.name == "largebatch"]
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert float(found.data.params["optim.lr"]) == 0.05
    assert found.data.params["train.epochs"] == "2"  # MLflow params cannot change: a tag
    assert found.data.tags["resumed.train.epochs"] == "3"
    for kind, rows in _records(run).items():
        for key in trackers.base.scalars(rows[0]):
            history = client.get_metric_history(run_id, f"{kind}/{key}")
            assert [m.step for m in history] == [r["step"] for r in rows], (kind, key)
            for metric, row in zip(history, rows, strict=True):
                assert _same(metric.value, row[key]), (kind, key)


def test_unknown_or_repeated_tracker_is_one_error_line(tmp_path, tiny_mnist1d_overrides, capsys):
    out = tmp_path / "run"
    argv = ["train", "mnist1d_mlp", *tiny_mnist1d_overrides, "train.trackers=[nope]"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "train.trackers" in err[0]
    assert "tensorboard, csv, wandb, mlflow" in err[0] and not out.exists()
    with pytest.raises(ConfigError, match="csv given twice"):
        load_config(None, ["train.trackers=[csv, csv]"])


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_package_is_one_error_line_naming_the_extra(
    name, tmp_path, tiny_mnist1d_overrides, monkeypatch, capsys
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda mod, *a: None if mod == name else real(mod, *a)
    )
    over = [*tiny_mnist1d_overrides, f"train.trackers=[csv, {name}]"]
    with pytest.raises(UserError, match=rf"pip install 'largebatch\[{name}\]'"):
        train(load_config(None, over), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory is made

    out = tmp_path / "cli"
    assert main(["train", "mnist1d_mlp", *over, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and f"largebatch[{name}]" in err[0]
    assert not out.exists()


def test_a_tracker_that_cannot_start_is_one_error_line(
    tmp_path, tiny_mnist1d_overrides, monkeypatch, capsys
):
    def refuse(self, run_dir, config, start_step):
        raise OSError("disk full")

    monkeypatch.setattr(csv_tracker.CsvTracker, "start", refuse)
    argv = ["train", "mnist1d_mlp", *tiny_mnist1d_overrides, "train.trackers=[csv]"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "csv tracker could not start (OSError: disk full)" in err[0]
    assert "--resume" in err[0]
