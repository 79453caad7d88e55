"""An MLflow run (``train.trackers: [mlflow]``; the ``largebatch[mlflow]`` extra, which installs
``mlflow-skinny``: the tracking client without the server).

The tracking URI is ``MLFLOW_TRACKING_URI`` if set, else the file store ``file:RUN/mlruns``
(``mlflow ui --backend-store-uri RUN/mlruns`` shows it, with ``MLFLOW_ALLOW_FILE_STORE=true``
from MLflow 3 on, which keeps that store in maintenance mode: this tracker sets it for its own
file store). The experiment is ``MLFLOW_EXPERIMENT_NAME``, else ``largebatch``; the run's name is
the run directory's. MLflow's usage telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY`` is set.

- params: the resolved config, flattened (``optim.lr``, ``model.hidden``, ...);
- metrics, at step = completed optimizer updates: ``train/<key>`` (``steps.jsonl``),
  ``epoch/<key>`` (``metrics.jsonl``) and ``eval/<key>`` (``evals.jsonl``).

``--resume`` continues the same run (id kept in ``RUN/trackers.json``). MLflow params cannot
change: a key changed on resume (``train.epochs``, ...) is recorded as the tag
``resumed.<key>``. MLflow cannot drop points: after a kill without a final checkpoint the
steps between the checkpoint and the kill are in the history twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from largebatch.engine.trackers.base import (
    Tracker,
    as_text,
    flat_config,
    run_id,
    scalars,
    store_run_id,
)

DIRNAME = "mlruns"
EXPERIMENT = "largebatch"
_BATCH = 100
"""MLflow takes at most 100 params per batch."""


class MlflowTracker(Tracker):
    name = "mlflow"
    package = "mlflow"
    install = "pip install mlflow-skinny (or pip install 'largebatch[mlflow]')"

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id = ""
        self._env: list[str] = []

    def start(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir) / DIRNAME).resolve().as_uri()
        defaults = {"MLFLOW_DISABLE_TELEMETRY": "true"}
        if uri.startswith("file:") or "://" not in uri:
            defaults["MLFLOW_ALLOW_FILE_STORE"] = "true"
        self._env = [key for key in defaults if key not in os.environ]
        os.environ.update({key: defaults[key] for key in self._env})  # undone by finish
        try:
            self._start(run_dir, uri, config, start_step)
        except BaseException:
            self._restore_env()
            raise

    def _start(self, run_dir: Path, uri: str, config: dict[str, Any], start_step: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        logged = self._open_run(run_dir, start_step)
        values = {k: as_text(v) for k, v in flat_config(config).items()}
        params = [Param(k, v) for k, v in values.items() if k not in logged]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _BATCH])
        for key, value in values.items():
            if key in logged and logged[key] != value:  # params cannot change: a tag
                self.client.set_tag(self.run_id, f"resumed.{key}", value)

    def _open_run(self, run_dir: Path, start_step: int) -> dict[str, str]:
        """Reopen the stored run (returning its params) or create one (no params yet)."""
        from mlflow.exceptions import MlflowException

        previous = run_id(run_dir, self.name, start_step)
        if previous:
            try:
                params = dict(self.client.get_run(previous).data.params)
                self.client.update_run(previous, status="RUNNING")
                self.run_id = previous
                return params
            except MlflowException:
                pass  # not in this tracking store (MLFLOW_TRACKING_URI changed): a new run
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            experiment_id = self.client.create_experiment(name)
        else:
            experiment_id = experiment.experiment_id
        tags = {"largebatch.run_dir": str(Path(run_dir).resolve())}
        run = self.client.create_run(experiment_id, run_name=Path(run_dir).name, tags=tags)
        self.run_id = run.info.run_id
        store_run_id(run_dir, self.name, self.run_id)
        return {}

    def log(self, kind: str, row: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{kind}/{k}", v, now, step) for k, v in scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, failed: bool) -> None:
        try:
            if self.client is not None and self.run_id:
                self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        finally:
            self._restore_env()

    def _restore_env(self) -> None:
        for key in self._env:
            os.environ.pop(key, None)
        self._env = []
