"""MLflow run lifecycle for a training run, on rank 0 only.

Tracking URI: `track.tracking_uri`, else $MLFLOW_TRACKING_URI, else a sqlite store in the run directory.
A tracking server that cannot be reached gives one warning and training goes on without tracking;
a failure later (server gone mid-run) also warns once and never stops training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..config import Config, flatten, to_dict

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"


def open_experiment(tracking_uri: str, experiment: str, folder: Path):
    """(client, tracking URI, experiment id) for a training run's or a sweep's `folder`. The URI is
    `tracking_uri`, else $MLFLOW_TRACKING_URI, else a sqlite store in `folder`. A missing experiment is
    created; on a local store (sqlite:, file: or a bare path) its artifacts go to folder/mlartifacts,
    a tracking server keeps its own artifact location."""
    import mlflow

    folder = folder.resolve()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, uri, found.experiment_id
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = (folder / "mlartifacts").as_uri() if local else None
    return client, uri, client.create_experiment(experiment, artifact_location=location)


class NullTracker:
    """What every rank but 0 (and a run with tracking off) gets: every call does nothing."""

    uri = ""
    run_id = ""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class Tracker(NullTracker):
    def __init__(self, cfg: Config, run_dir: Path, run_name: str, extra_params: dict[str, Any] | None = None):
        import mlflow

        # Fail fast on an unreachable server instead of retrying for minutes (user settings win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._mlflow = mlflow
        self._warned = False
        self.client, self.uri, experiment_id = open_experiment(
            cfg.track.tracking_uri, cfg.track.experiment, run_dir
        )
        id_file = run_dir / RUN_ID_FILE
        if id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"bigtrain.run_dir": str(run_dir.resolve())}
            if cfg.track.parent_run_id:  # a sweep's trial: nested under the sweep's run
                tags["mlflow.parentRunId"] = cfg.track.parent_run_id
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n")
            params = {**flatten(to_dict(cfg)), **(extra_params or {})}
            items = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])
            self.client.log_dict(self.run_id, to_dict(cfg), "config.yaml")
        log.info("MLflow run %s at %s", self.run_id, self.uri)

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # tracking must never stop training
            if not self._warned:
                log.warning("MLflow %s failed at %s (%s); training goes on", what, self.uri, e)
                self._warned = True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        entities = self._mlflow.entities
        import time

        now = int(time.time() * 1000)
        batch = [entities.Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._guard("log_artifact", self.client.log_artifact, self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        batch = [self._mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()]
        self._guard("set_tags", self.client.log_batch, self.run_id, tags=batch)

    def close(self, status: str = "FINISHED") -> None:
        self._guard("end run", self.client.set_terminated, self.run_id, status)


def make_tracker(cfg: Config, run_dir: Path, rank: int, run_name: str, extra_params=None) -> NullTracker:
    if rank != 0 or not cfg.track.enabled:
        return NullTracker()
    try:
        return Tracker(cfg, run_dir, run_name, extra_params)
    except Exception as e:
        log.warning("MLflow tracking is unavailable (%s); training goes on without it", e)
        return NullTracker()
