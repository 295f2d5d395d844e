"""A study in MLflow: its parent run, one nested run per (step, seed) with skip and resume, and their artifacts."""
from __future__ import annotations

import numbers
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from ..schema import OUTCOMES, RunKind, Status, Tag, benchmark_run_name, step_run_name
from .datasets import DatasetRecord, log_datasets
from .errors import TrackingUnreachable
from .server import DEFAULT_PATIENCE_S
from .store import TrackingError, check_tracking_uri, ensure_experiment, first_line, is_shared_server, open_client
from .system_metrics import SYSTEM_PREFIX, monitor_system
from .ui_links import run_path, runs_view_path, step_runs_view

# MLflow statuses of a run that did not complete: a later attempt with the same key resumes it.
UNFINISHED_STATUSES = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"arch": {"kernel_size": 7}} -> {"arch.kernel_size": 7}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class StepRun:
    """One (step, seed) run: per-epoch history, final metrics, outcome, artifacts and datasets.

    Numbers that are not per-epoch are logged at MLflow step = last epoch + 1, so that for a key logged
    both ways (train_img_per_s) the final figure is the run's latest value, which is what MLflow's run
    table and `load_step_runs` show.
    """

    def __init__(self, client: MlflowClient, run_id: str, resumed: bool, final_step: int = 0) -> None:
        self._client = client
        self.run_id = run_id
        # True when this run continues an earlier, unfinished one.
        self.resumed = resumed
        self.outcome: Status | None = None
        self._final_step = final_step

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        """Numbers of one epoch (train_loss, lr, val_top1, ...), logged with MLflow step = epoch."""
        log_numbers(self._client, self.run_id, metrics, step=epoch)
        self._final_step = max(self._final_step, epoch + 1)

    def log_metrics(self, metrics: dict[str, float | None]) -> None:
        """Numbers that are not per-epoch (final or benchmark figures); None values are skipped."""
        log_numbers(self._client, self.run_id, metrics, step=self._final_step)

    def log_final(self, metrics: dict[str, float], status: Status, reason: str = "") -> None:
        """The run's final numbers and its outcome (finished or diverged, with why)."""
        _check_outcome(status)
        self.log_metrics(metrics)
        self.set_outcome(status, reason)

    def set_outcome(self, status: Status, reason: str = "") -> None:
        self.outcome = _check_outcome(status)
        log_tags(self._client, self.run_id, {Tag.STATUS: status, Tag.REASON: reason or "-"})

    def log_artifact(self, path: Path | str, folder: str | None = None) -> None:
        """A file of the run (weights, predictions), under `folder` in the run's artifacts."""
        self._client.log_artifact(self.run_id, str(path), folder)

    def log_datasets(self, records: Sequence[DatasetRecord]) -> None:
        """The data the run trained and was evaluated on (mlflow.data), shown in the UI's Dataset column."""
        log_datasets(self._client, self.run_id, records)


class Tracker:
    """An experiment in one MLflow store, through MLflow's client (no global active-run state).

    `patience_s`: how long every call waits for a tracking server that does not answer before it raises
    TrackingUnreachable (roadmap.tracking.server). `system_metrics`: log MLflow's system metrics (CPU, memory,
    GPUs) into each step run while it is open.
    """

    def __init__(self, tracking_uri: str | None, experiment: str, *, description: str = "",
                 patience_s: float = DEFAULT_PATIENCE_S, system_metrics: bool = True) -> None:
        self.tracking_uri = check_tracking_uri(tracking_uri, patience_s)
        self.experiment = experiment
        self.patience_s = patience_s
        self._client = open_client(self.tracking_uri, patience_s)
        self._system_metrics = system_metrics
        # The study's own tracker (the one that describes the experiment) also saves the runs table's view of
        # its step runs, which runs_view_url opens.
        tags = dict([(Tag.DESCRIPTION, description), step_runs_view()]) if description else {}
        self.experiment_id = ensure_experiment(self._client, self.tracking_uri, experiment, tags)
        # The parent run that step runs opened by this tracker nest under.
        self.study_run_id: str | None = None

    def runs_view_url(self, server: str = "http://127.0.0.1:5000") -> str:
        """Where the study lives in the UI: the experiment's step runs, flat, with top-1 and Δ as columns, in the
        model-training view (roadmap.tracking.ui_links); for a tracking server, on it."""
        return f"{self._ui_base(server)}/{runs_view_path(self.experiment_id)}"

    def run_url(self, run_id: str, server: str = "http://127.0.0.1:5000") -> str:
        """A run's page in the model-training view (MLflow 3.17 opens a bare run link in its GenAI view)."""
        return f"{self._ui_base(server)}/{run_path(self.experiment_id, run_id)}"

    def _ui_base(self, server: str) -> str:
        return self.tracking_uri.rstrip("/") if is_shared_server(self.tracking_uri) else server

    # ------------------------------------------------------------------------------------ parent run

    def start_study(self, run_name: str, params: dict[str, Any], tags: dict[str, Any], description: str = "") -> str:
        """A new parent run (RUNNING until `end_study`); step runs opened afterwards nest under it."""
        run_tags = {**_str_values(tags), Tag.RUN_KIND: RunKind.STUDY}
        if description:
            run_tags[Tag.DESCRIPTION] = description
        run = self._client.create_run(self.experiment_id, run_name=run_name, tags=resolve_tags(run_tags))
        self._log_params(run.info.run_id, params)
        self.study_run_id = run.info.run_id
        return run.info.run_id

    def reopen_study(self, run_id: str) -> bool:
        """Mark an earlier parent run RUNNING again (a re-attached launch); False if it is gone or deleted."""
        try:
            run = self._client.get_run(run_id)
        except TrackingUnreachable:
            raise
        except Exception:  # MlflowException for an unknown id; the store's own errors otherwise
            return False
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
            return False
        self._client.update_run(run_id, status="RUNNING")
        self.study_run_id = run_id
        return True

    def attach_study(self, run_id: str) -> None:
        """Nest the step runs opened from now on under an existing parent run (a job of a cluster launch)."""
        self.study_run_id = run_id

    def end_study(self, run_id: str, status: str = "FINISHED") -> None:
        self._client.set_terminated(run_id, status)

    @contextmanager
    def study(self, run_name: str, params: dict[str, Any], tags: dict[str, Any],
              description: str = "") -> Iterator[str]:
        """The parent run of one invocation; yields its run id. It ends FAILED (or KILLED) on an exception."""
        outer = self.study_run_id
        run_id = self.start_study(run_name, params, tags, description)
        try:
            yield run_id
        except BaseException as error:
            if not isinstance(error, TrackingUnreachable):  # else it stays RUNNING: the server is gone
                self.end_study(run_id, _terminal_status(error))
            raise
        else:
            self.end_study(run_id, "FINISHED")
        finally:
            self.study_run_id = outer

    def log_study_text(self, run_id: str, text: str, name: str) -> None:
        """A text file of the whole study (its plan) on its parent run."""
        self._client.log_text(run_id, text, name)

    def count_step_runs_of_other_versions(self, roadmap: str, hash_version: int) -> int:
        """Step runs of `roadmap` in this experiment whose configuration hash is of another version."""
        query = f"tags.{Tag.RUN_KIND} = '{RunKind.STEP}' and tags.{Tag.ROADMAP} = {quoted('roadmap', roadmap)}"
        return sum(run.data.tags.get(Tag.HASH_VERSION) != str(hash_version)
                   for run in search_runs(self._client, [self.experiment_id], query))

    def log_study_artifacts(self, run_id: str, paths: Sequence[Path]) -> None:
        """Files of the whole study (figures, results table) on its parent run."""
        for path in paths:
            self._client.log_artifact(run_id, str(path))

    # ------------------------------------------------------------------------------------- step runs

    def find_finished(self, seed: int, config_hash: str) -> str | None:
        """The id of the latest FINISHED step run of this (seed, configuration), whichever variant named it
        (outcome finished or diverged), else None."""
        finished = [run for run in self._step_runs(seed, config_hash) if run.info.status == "FINISHED"]
        return finished[0].info.run_id if finished else None

    @contextmanager
    def step_run(self, step: str, seed: int, config_hash: str, *, params: dict[str, Any], tags: dict[str, Any],
                 config: dict[str, Any]) -> Iterator[StepRun]:
        """A nested run for (step, seed, config_hash), resuming an unfinished one with the same key.

        Params are flattened ("arch.kernel_size"); on a resumed run only params it lacks are added, since
        MLflow params cannot change. `config` is stored as the artifact config.json. An exception ends the
        run FAILED (KeyboardInterrupt: KILLED) with tags status=failed|killed and reason, and propagates.
        """
        key_tags = {Tag.STEP: step, Tag.SEED: seed, Tag.CONFIG_HASH: config_hash}
        run_tags = {**_str_values(tags), **_str_values(key_tags), Tag.RUN_KIND: RunKind.STEP}
        if self.study_run_id:
            run_tags[Tag.PARENT_RUN] = self.study_run_id
        unfinished = [run for run in self._step_runs(seed, config_hash) if run.info.status in UNFINISHED_STATUSES]
        if unfinished:
            earlier = unfinished[0]
            run_id = earlier.info.run_id
            self._client.update_run(run_id, status="RUNNING")
            attempts = int(earlier.data.tags.get(Tag.ATTEMPTS, "1")) + 1
            for stale in (Tag.REASON, Tag.STATUS):
                if stale in earlier.data.tags and stale not in run_tags:
                    self._client.delete_tag(run_id, stale)
            log_tags(self._client, run_id, {**run_tags, Tag.ATTEMPTS: str(attempts)})
            self._log_params(run_id, {k: v for k, v in flatten(params).items() if k not in earlier.data.params})
            final_step = self._next_step(run_id)
        else:
            run = self._client.create_run(self.experiment_id, run_name=step_run_name(step, seed),
                                          tags=resolve_tags({**run_tags, Tag.ATTEMPTS: "1"}))
            run_id, final_step = run.info.run_id, 0
            self._log_params(run_id, params)
        self._client.log_dict(run_id, config, "config.json")
        step_run = StepRun(self._client, run_id, resumed=bool(unfinished), final_step=final_step)
        try:
            with self._system_metrics_of(run_id):
                yield step_run
        except BaseException as error:
            if isinstance(error, TrackingUnreachable):
                raise  # nothing can be recorded; the run stays RUNNING and the next attempt resumes it
            status = _terminal_status(error)
            log_tags(self._client, run_id, {Tag.STATUS: Status.KILLED if status == "KILLED" else Status.FAILED,
                                            Tag.REASON: first_line(error)})
            self._client.set_terminated(run_id, status)
            raise
        else:
            if step_run.outcome is None:
                step_run.set_outcome(Status.FINISHED)
            self._client.set_terminated(run_id, "FINISHED")

    def _system_metrics_of(self, run_id: str) -> AbstractContextManager[None]:
        return monitor_system(self.tracking_uri, run_id) if self._system_metrics else nullcontext()

    def annotate(self, run_id: str, metrics: dict[str, float | None], tags: dict[str, Any]) -> None:
        """Add numbers and tags to a completed run (a step's Δ and its test), after the last epoch."""
        log_numbers(self._client, run_id, metrics, step=self._next_step(run_id))
        log_tags(self._client, run_id, _str_values(tags))

    def log_benchmark(self, step: str, figures: dict[str, float], *, params: dict[str, Any],
                      tags: dict[str, Any]) -> str:
        """A nested run (run_kind=benchmark) holding one step's measured cost; returns its id.

        The same figures also go into every FINISHED training run of the step with `tags["config_hash"]`,
        so that the step's own run shows its cost next to its accuracy.
        """
        run_tags = {**_str_values(tags), Tag.STEP: step, Tag.RUN_KIND: RunKind.BENCHMARK}
        if self.study_run_id:
            run_tags[Tag.PARENT_RUN] = self.study_run_id
        run = self._client.create_run(self.experiment_id, run_name=benchmark_run_name(step),
                                      tags=resolve_tags(run_tags))
        self._log_params(run.info.run_id, params)
        log_numbers(self._client, run.info.run_id, figures, step=0)
        self._client.set_terminated(run.info.run_id, "FINISHED")
        query = (f"tags.{Tag.RUN_KIND} = '{RunKind.STEP}' and "
                 f"tags.{Tag.CONFIG_HASH} = {quoted('config_hash', tags.get(Tag.CONFIG_HASH, ''))}")
        for trained in search_runs(self._client, [self.experiment_id], query):
            if trained.info.status == "FINISHED":
                log_numbers(self._client, trained.info.run_id, figures, step=self._next_step(trained.info.run_id))
        return run.info.run_id

    def _next_step(self, run_id: str) -> int:
        """One after the last MLflow step any metric of the run was logged at (system metrics count samples)."""
        metrics = [key for key in self._client.get_run(run_id).data.metrics if not key.startswith(SYSTEM_PREFIX)]
        return 1 + max((m.step for key in metrics for m in self._client.get_metric_history(run_id, key)), default=-1)

    def _step_runs(self, seed: int, config_hash: str) -> list:
        """Step runs of this (seed, configuration), newest first: a run is its configuration and seed."""
        query = (f"tags.{Tag.RUN_KIND} = '{RunKind.STEP}' and tags.{Tag.SEED} = {quoted('seed', seed)} "
                 f"and tags.{Tag.CONFIG_HASH} = {quoted('config_hash', config_hash)}")
        return search_runs(self._client, [self.experiment_id], query)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        entries = [Param(key, str(value)) for key, value in flatten(params).items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, params=chunk)


def log_numbers(client: MlflowClient, run_id: str, metrics: dict[str, float | None], step: int) -> None:
    """Metrics in batches; None values are skipped, anything but a number is a caller's mistake."""
    stamp = int(time.time() * 1000)
    entries = []
    for key, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TrackingError(f"metric {key!r} = {value!r} is not a number; metrics must be numbers")
        entries.append(Metric(str(key), float(value), stamp, step))
    for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)


def log_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    entries = [RunTag(str(key), str(value)) for key, value in tags.items()]
    for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)


def quoted(name: str, value: Any) -> str:
    """A value for a search filter, in single quotes; quotes and backslashes cannot be searched for."""
    text = str(value)
    if "'" in text or "\\" in text:
        raise TrackingError(f"{name}={text!r} is not valid; quotes and backslashes cannot be searched for")
    return f"'{text}'"


def search_runs(client: MlflowClient, experiment_ids: list[str], query: str) -> list:
    """Every active run matching `query`, newest first, across result pages."""
    runs: list = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=query, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _check_outcome(status: str) -> Status:
    if status not in OUTCOMES:
        raise TrackingError(f"status={status!r} is not valid; choose one of: {', '.join(OUTCOMES)}")
    return Status(status)


def _str_values(tags: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in tags.items()}


def _terminal_status(error: BaseException) -> str:
    """KILLED for an interruption (Ctrl-C, a job's exit on preemption), FAILED for an error."""
    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
    return RunStatus.to_string(RunStatus.KILLED if interrupted else RunStatus.FAILED)
