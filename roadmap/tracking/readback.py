"""Reading a study back from MLflow: its runs, a metric's history, a run's artifacts.

Each function waits up to `patience_s` for a tracking server that does not answer (roadmap.tracking.server).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException

from ..schema import RunKind, Tag
from .runs import quoted, search_runs
from .server import DEFAULT_PATIENCE_S
from .store import TrackingError, active_experiment_id, check_tracking_uri, first_line, open_client


@dataclass(frozen=True)
class TrackedRun:
    """One run as MLflow holds it. Times in ms since the epoch (end_time None while it runs)."""

    run_id: str
    run_name: str
    mlflow_status: str  # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    start_time: int
    end_time: int | None
    parent_run_id: str | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the last logged value of each metric


def load_step_runs(tracking_uri: str | None, experiment: str, kind: RunKind = RunKind.STEP, *,
                   patience_s: float = DEFAULT_PATIENCE_S) -> list[TrackedRun]:
    """Every run of `experiment` of one kind (training steps, or --benchmark runs), newest first.

    An unknown experiment raises TrackingError.
    """
    uri = check_tracking_uri(tracking_uri, patience_s)
    experiment_id = active_experiment_id(uri, experiment, patience_s)
    if experiment_id is None:
        raise TrackingError(f"experiment {experiment!r} does not exist in {uri!r}; run the study first "
                            f"or pass the experiment and tracking URI it used")
    runs = search_runs(open_client(uri, patience_s), [experiment_id], f"tags.{Tag.RUN_KIND} = {quoted('kind', kind)}")
    return [_tracked(run) for run in runs]


def load_run(tracking_uri: str | None, run_id: str, *, patience_s: float = DEFAULT_PATIENCE_S) -> TrackedRun:
    client = _client(tracking_uri, patience_s)
    try:
        return _tracked(client.get_run(run_id))
    except MlflowException as error:
        raise TrackingError(f"run {run_id!r} cannot be read ({first_line(error)})") from None


def load_metric_history(tracking_uri: str | None, run_id: str, key: str, *,
                        patience_s: float = DEFAULT_PATIENCE_S) -> list[tuple[int, float]]:
    """(epoch, value) pairs of one metric of one run, in epoch order (e.g. val_top1 per epoch)."""
    client = _client(tracking_uri, patience_s)
    try:
        history = client.get_metric_history(run_id, key)
    except MlflowException as error:
        raise TrackingError(f"run {run_id!r} cannot be read ({first_line(error)})") from None
    # A resumed run may log an epoch twice: the later value wins.
    latest = {metric.step: metric.value for metric in sorted(history, key=lambda m: (m.step, m.timestamp))}
    return sorted(latest.items())


def download_artifact(tracking_uri: str | None, run_id: str, path: str, destination: Path, *,
                      patience_s: float = DEFAULT_PATIENCE_S) -> Path | None:
    """A run's artifact copied under `destination`; None when the run has no such artifact."""
    client = _client(tracking_uri, patience_s)
    os.environ.setdefault(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, "false")  # no bar per file in a study's output
    try:
        names = {info.path for info in client.list_artifacts(run_id)}
        if path not in names:
            return None
        destination.mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, path, str(destination)))
    except MlflowException as error:
        raise TrackingError(f"artifact {path!r} of run {run_id!r} cannot be read ({first_line(error)})") from None


def _client(tracking_uri: str | None, patience_s: float):
    return open_client(check_tracking_uri(tracking_uri, patience_s), patience_s)


def _tracked(run) -> TrackedRun:
    return TrackedRun(
        run_id=run.info.run_id, run_name=run.info.run_name, mlflow_status=run.info.status,
        start_time=run.info.start_time, end_time=run.info.end_time,
        parent_run_id=run.data.tags.get(Tag.PARENT_RUN), tags=dict(run.data.tags), params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )
