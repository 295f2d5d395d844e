"""The only MLflow user: a study's parent run, one nested run per (step, seed), skip and resume, read-back."""
from __future__ import annotations

import importlib.metadata
import numbers
import os
import platform
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.file_utils import path_to_local_file_uri
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from .spec import SpecError

# MLflow 3.x's own default: with MLFLOW_TRACKING_URI unset (and no legacy ./mlruns file store present),
# `mlflow.get_tracking_uri()` is "sqlite:///mlflow.db" in the working directory, and a plain `mlflow ui`
# started there serves it. Artifacts go beside the database, in ./mlruns/<experiment>.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

VALID_URI_FORMS = (
    "sqlite:///PATH (e.g. sqlite:///mlflow.db), http(s)://HOST:PORT of an `mlflow server`, "
    "or a directory / file:///DIR (MLflow's file store; needs MLFLOW_ALLOW_FILE_STORE=true)"
)
# Seconds the reachability probe of a tracking server may take (MLflow's own retries take minutes).
SERVER_PROBE_TIMEOUT_S = 3.0

# Tags that mark our runs; "mlflow.parentRunId" is how MLflow itself nests runs (UI tree, search).
RUN_KIND_TAG = "run_kind"
PARENT_RUN_TAG = "mlflow.parentRunId"
ATTEMPTS_TAG = "attempts"
# A step run's outcome tag: set by StepRun.log_final, or by step_run on an exception.
OUTCOMES = ("finished", "diverged")
UNFINISHED_STATUSES = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")


class TrackingError(SpecError):
    """A tracking URI, server or experiment that cannot be used; the message names it and the valid forms."""


def check_tracking_uri(tracking_uri: str | None) -> str:
    """The URI to use (the default for None); a malformed or unreachable one raises TrackingError."""
    uri = DEFAULT_TRACKING_URI if tracking_uri is None else tracking_uri.strip()
    scheme = urlparse(uri).scheme
    if not uri:
        raise TrackingError(f"tracking URI is empty; valid forms: {VALID_URI_FORMS}")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///") or not uri[len("sqlite:///"):].strip("/"):
            raise TrackingError(f"tracking URI {uri!r} is malformed; valid forms: {VALID_URI_FORMS}")
        if Path(_sqlite_path(uri)).is_dir():
            raise TrackingError(f"tracking URI {uri!r} names a directory, not a database file; "
                                f"valid forms: {VALID_URI_FORMS}")
    elif scheme in ("http", "https"):
        _probe_server(uri)
    elif scheme == "file":
        if not uri.startswith("file:///") and not uri.startswith("file://localhost/"):
            raise TrackingError(f"tracking URI {uri!r} is malformed; valid forms: {VALID_URI_FORMS}")
    elif scheme and len(scheme) > 1:  # one letter: a Windows drive, i.e. a plain path
        raise TrackingError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}; valid forms: {VALID_URI_FORMS}")
    return uri


def _sqlite_path(uri: str) -> str:
    # sqlite:///rel/path is relative to the working directory; sqlite:////abs/path is absolute.
    return uri[len("sqlite:///"):]


def _probe_server(uri: str) -> None:
    """Fail within seconds when nothing answers at `uri` (any HTTP answer, even an error, is an answer)."""
    parsed = urlparse(uri)
    if not parsed.hostname:
        raise TrackingError(f"tracking URI {uri!r} names no host; valid forms: {VALID_URI_FORMS}")
    try:
        _ = parsed.port
    except ValueError:
        raise TrackingError(f"tracking URI {uri!r} has an invalid port; valid forms: {VALID_URI_FORMS}") from None
    context = None
    if parsed.scheme == "https" and os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_PROBE_TIMEOUT_S, context=context):
            pass
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"tracking server {uri!r} is unreachable ({reason}); start it with `mlflow server` "
                            f"or use another URI; valid forms: {VALID_URI_FORMS}") from None


def _client(uri: str) -> MlflowClient:
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as error:  # MLflow, SQLAlchemy and sqlite3 each raise their own kinds here
        raise _store_error(uri, error, "cannot be opened") from None


def _store_error(uri: str, error: Exception, what: str) -> TrackingError:
    if "MLFLOW_ALLOW_FILE_STORE" in str(error):
        return TrackingError(f"tracking URI {uri!r} is MLflow's file store, which mlflow 3 refuses unless "
                             f"MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///PATH (default sqlite:///mlflow.db)")
    return TrackingError(f"tracking URI {uri!r} {what} ({_first_line(error)}); valid forms: {VALID_URI_FORMS}")


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(getattr(error, "message", error)).strip()
    line = text.splitlines()[0][:limit] if text else ""
    return line if isinstance(error, MlflowException) else f"{type(error).__name__}: {line}".rstrip(": ")


def _store_is_absent(uri: str) -> bool:
    """True when a local store does not exist yet (so reading it must not create it)."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        return not Path(_sqlite_path(uri)).exists()
    if scheme == "file":
        return not Path(urlparse(uri).path).exists()
    if scheme in ("http", "https"):
        return False
    return not Path(uri).exists()


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store sit beside the database, wherever the working directory is."""
    if urlparse(uri).scheme != "sqlite":
        return None  # a server or file store decides for itself
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return path_to_local_file_uri(str(Path(_sqlite_path(uri)).resolve().parent / "mlruns" / folder))


def _get_experiment(client: MlflowClient, uri: str, experiment: str):
    try:
        return client.get_experiment_by_name(experiment)
    except Exception as error:  # as in _client
        raise _store_error(uri, error, "cannot be read") from None


def experiment_exists(tracking_uri: str | None, experiment: str) -> bool:
    """Whether `experiment` exists (and is not deleted) in the store; never creates the store."""
    uri = check_tracking_uri(tracking_uri)
    return _active_experiment_id(uri, experiment) is not None


def _active_experiment_id(uri: str, experiment: str) -> str | None:
    if _store_is_absent(uri):
        return None
    found = _get_experiment(_client(uri), uri, experiment)
    return found.experiment_id if found is not None and found.lifecycle_stage == "active" else None


def environment_tags() -> dict[str, str]:
    """Git revision and library versions, for the tags of every run (no torch import)."""
    tags = {"git_revision": _git_revision(), "python_version": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "mlflow"):
        try:
            tags[f"{package}_version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[f"{package}_version"] = "unknown"
    return tags


def _git_revision() -> str:
    """HEAD of the repository holding this package, "+dirty" when tracked files differ; "unknown" outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metric_value(key: str, value: Any) -> float | None:
    """A loggable float, None to skip; anything else is a caller's mistake."""
    if value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    raise TrackingError(f"metric {key!r} = {value!r} is not a number; metrics must be numbers")


def _quoted(name: str, value: Any) -> str:
    text = str(value)
    if "'" in text or "\\" in text:
        raise TrackingError(f"{name}={text!r} is not valid; quotes and backslashes cannot be searched for")
    return f"'{text}'"


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class StepRun:
    """One (step, seed) run: per-epoch history, final metrics, outcome tags.

    Numbers that are not per-epoch (log_final, log_metrics) are logged at MLflow step = last epoch + 1, so that
    for a key logged both ways (train_img_per_s) the final figure is the run's latest value, which is what
    MLflow's run table and `load_step_runs` show.
    """

    def __init__(self, client: MlflowClient, run_id: str, resumed: bool, final_step: int = 0) -> None:
        self._client = client
        self.run_id = run_id
        # True when this run continues an earlier, unfinished one.
        self.resumed = resumed
        self.outcome: str | None = None
        self._final_step = final_step

    def log_epoch(self, metrics: dict[str, Any], epoch: int) -> None:
        """Numbers of one epoch (train_loss, lr, val_top1, ...), logged with MLflow step = epoch."""
        self._log(metrics, step=epoch)
        self._final_step = max(self._final_step, epoch + 1)

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        """Numbers that are not per-epoch (e.g. benchmark figures); None values are skipped."""
        self._log(metrics, step=self._final_step)

    def log_final(self, metrics: dict[str, Any]) -> None:
        """Final numbers (top1, top5, params, gmacs, ...) as metrics; string values as tags.

        The engine's outcome goes in "status" ("finished" or "diverged") with an optional "reason";
        without a "status" key the run counts as "finished" when the step_run block ends normally.
        """
        tags = {key: value for key, value in metrics.items() if isinstance(value, str)}
        self._record_outcome(tags)
        self._log({key: value for key, value in metrics.items() if key not in tags}, step=self._final_step, tags=tags)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Extra tags; a "status" must be an outcome ("finished" or "diverged")."""
        self._record_outcome(tags)
        self._log({}, step=0, tags=tags)

    def _record_outcome(self, tags: dict[str, Any]) -> None:
        if "status" in tags:
            if tags["status"] not in OUTCOMES:
                raise TrackingError(f"status={tags['status']!r} is not valid; choose one of: {', '.join(OUTCOMES)}")
            self.outcome = tags["status"]

    def _log(self, metrics: dict[str, Any], step: int, tags: dict[str, Any] | None = None) -> None:
        stamp = _now_ms()
        entries = [Metric(key, number, stamp, step)
                   for key, value in metrics.items() if (number := _metric_value(key, value)) is not None]
        tag_entries = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=chunk)
        for chunk in _chunks(tag_entries, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=chunk)


class Tracker:
    """An experiment in one MLflow store, through MLflow's client (no global active-run state)."""

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        if not experiment or not experiment.strip():
            raise TrackingError("experiment name is empty; give a name such as 'convnext_roadmap'")
        self.tracking_uri = check_tracking_uri(tracking_uri)
        self.experiment = experiment
        self._client = _client(self.tracking_uri)
        found = _get_experiment(self._client, self.tracking_uri, experiment)
        if found is not None and found.lifecycle_stage != "active":
            raise TrackingError(f"experiment {experiment!r} is deleted in {self.tracking_uri!r}; restore it "
                                f"(`mlflow experiments restore`) or choose another name")
        if found is None:
            try:
                self.experiment_id = self._client.create_experiment(
                    experiment, artifact_location=_artifact_location(self.tracking_uri, experiment))
            except MlflowException as error:
                raise TrackingError(f"experiment {experiment!r} cannot be created in {self.tracking_uri!r} "
                                    f"({_first_line(error)})") from None
        else:
            self.experiment_id = found.experiment_id
        self._study_run_id: str | None = None

    @contextmanager
    def study(self, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> Iterator[str]:
        """The parent run of one invocation; yields its run id. Step runs opened inside nest under it."""
        run = self._client.create_run(self.experiment_id, run_name=run_name,
                                      tags=resolve_tags({**_str_values(tags), RUN_KIND_TAG: "study"}))
        run_id = run.info.run_id
        self._log_params(run_id, params)
        outer, self._study_run_id = self._study_run_id, run_id
        try:
            yield run_id
        except BaseException as error:
            self._client.set_terminated(run_id, _terminal_status(error))
            raise
        else:
            self._client.set_terminated(run_id, "FINISHED")
        finally:
            self._study_run_id = outer

    def find_finished(self, step: str, seed: int, config_hash: str) -> str | None:
        """The id of the latest FINISHED step run with these tags (outcome finished or diverged), else None."""
        runs = self._step_runs(step, seed, config_hash)
        finished = [run for run in runs if run.info.status == "FINISHED"]
        return finished[0].info.run_id if finished else None

    @contextmanager
    def step_run(self, step: str, seed: int, config_hash: str, *, params: dict[str, Any], tags: dict[str, Any],
                 config: dict[str, Any]) -> Iterator[StepRun]:
        """A nested run for (step, seed, config_hash), resuming an unfinished one with the same key.

        Params are flattened ("arch.kernel_size"); on a resumed run only params it lacks are added, since
        MLflow params cannot change. `config` is stored as the artifact config.json. An exception ends the
        run FAILED (KeyboardInterrupt: KILLED) with tags status=failed|killed and reason, and propagates.
        """
        key_tags = {"step": step, "seed": seed, "config_hash": config_hash}
        run_tags = {**_str_values(tags), **_str_values(key_tags), RUN_KIND_TAG: "step"}
        if self._study_run_id:
            run_tags[PARENT_RUN_TAG] = self._study_run_id
        unfinished = [run for run in self._step_runs(step, seed, config_hash)
                      if run.info.status in UNFINISHED_STATUSES]
        if unfinished:
            earlier = unfinished[0]
            run_id = earlier.info.run_id
            self._client.update_run(run_id, status="RUNNING")
            attempts = int(earlier.data.tags.get(ATTEMPTS_TAG, "1")) + 1
            for stale in ("reason", "status"):
                if stale in earlier.data.tags and stale not in run_tags:
                    self._client.delete_tag(run_id, stale)
            self._log_tags(run_id, {**run_tags, ATTEMPTS_TAG: str(attempts)})
            self._log_params(run_id, {k: v for k, v in flatten(params).items() if k not in earlier.data.params})
            final_step = 1 + max((m.step for key in earlier.data.metrics
                                  for m in self._client.get_metric_history(run_id, key)), default=-1)
        else:
            run = self._client.create_run(self.experiment_id, run_name=step,
                                          tags=resolve_tags({**run_tags, ATTEMPTS_TAG: "1"}))
            run_id = run.info.run_id
            final_step = 0
            self._log_params(run_id, params)
        self._client.log_dict(run_id, config, "config.json")
        step_run = StepRun(self._client, run_id, resumed=bool(unfinished), final_step=final_step)
        try:
            yield step_run
        except BaseException as error:
            status = _terminal_status(error)
            step_run._log({}, step=0, tags={"status": "killed" if status == "KILLED" else "failed",
                                            "reason": _first_line(error)})
            self._client.set_terminated(run_id, status)
            raise
        else:
            if step_run.outcome is None:
                step_run.set_tags({"status": OUTCOMES[0]})
            self._client.set_terminated(run_id, "FINISHED")

    def log_benchmark(self, step: str, figures: dict[str, Any], *, params: dict[str, Any], tags: dict[str, Any]) -> str:
        """A nested run (run_kind=benchmark) holding one step's measured cost; returns its id.

        The same figures also go into every FINISHED training run of the step with `tags["config_hash"]`,
        so that the step's own run shows its cost next to its accuracy.
        """
        run_tags = {**_str_values(tags), "step": step, RUN_KIND_TAG: "benchmark"}
        if self._study_run_id:
            run_tags[PARENT_RUN_TAG] = self._study_run_id
        run = self._client.create_run(self.experiment_id, run_name=f"{step} (benchmark)",
                                      tags=resolve_tags(run_tags))
        self._log_params(run.info.run_id, params)
        StepRun(self._client, run.info.run_id, resumed=False).log_metrics(figures)
        self._client.set_terminated(run.info.run_id, "FINISHED")
        query = (f"tags.{RUN_KIND_TAG} = 'step' and tags.step = {_quoted('step', step)} and "
                 f"tags.config_hash = {_quoted('config_hash', tags.get('config_hash', ''))}")
        for trained in _search(self._client, [self.experiment_id], query):
            if trained.info.status == "FINISHED":
                final_step = 1 + max((m.step for key in trained.data.metrics
                                      for m in self._client.get_metric_history(trained.info.run_id, key)), default=-1)
                StepRun(self._client, trained.info.run_id, resumed=True, final_step=final_step).log_metrics(figures)
        return run.info.run_id

    def _step_runs(self, step: str, seed: int, config_hash: str) -> list:
        """Step runs with this key, newest first."""
        query = (f"tags.{RUN_KIND_TAG} = 'step' and tags.step = {_quoted('step', step)} "
                 f"and tags.seed = {_quoted('seed', seed)} "
                 f"and tags.config_hash = {_quoted('config_hash', config_hash)}")
        return _search(self._client, [self.experiment_id], query)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        entries = [Param(key, str(value)) for key, value in flatten(params).items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, params=chunk)

    def _log_tags(self, run_id: str, tags: dict[str, str]) -> None:
        entries = [RunTag(key, value) for key, value in tags.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, tags=chunk)


def _str_values(tags: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in tags.items()}


def _terminal_status(error: BaseException) -> str:
    return RunStatus.to_string(RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED)


def _search(client: MlflowClient, experiment_ids: list[str], query: str) -> list:
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


def load_step_runs(tracking_uri: str | None, experiment: str, kind: str = "step") -> list[dict[str, Any]]:
    """Every step run of `experiment` (kind "step": training; "benchmark": --benchmark), newest first, as dicts.

    Each dict: run_id, run_name, mlflow_status (RUNNING | FINISHED | FAILED | KILLED | SCHEDULED), start_time and
    end_time (ms since the epoch; end_time None while running), parent_run_id, and dicts tags, params and metrics
    (the last logged value of each metric). An unknown experiment raises TrackingError.
    """
    uri = check_tracking_uri(tracking_uri)
    experiment_id = _active_experiment_id(uri, experiment)
    if experiment_id is None:
        raise TrackingError(f"experiment {experiment!r} does not exist in {uri!r}; run the study first "
                            f"or pass the experiment and tracking URI it used")
    runs = _search(_client(uri), [experiment_id], f"tags.{RUN_KIND_TAG} = {_quoted('kind', kind)}")
    return [
        {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "mlflow_status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "parent_run_id": run.data.tags.get(PARENT_RUN_TAG),
            "tags": dict(run.data.tags),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }
        for run in runs
    ]


def load_metric_history(tracking_uri: str | None, run_id: str, key: str) -> list[tuple[int, float]]:
    """(epoch, value) pairs of one metric of one run, in epoch order (e.g. val_top1 per epoch)."""
    client = _client(check_tracking_uri(tracking_uri))
    try:
        history = client.get_metric_history(run_id, key)
    except MlflowException as error:
        raise TrackingError(f"run {run_id!r} cannot be read ({_first_line(error)})") from None
    # A resumed run may log an epoch twice: the later value wins.
    latest = {metric.step: metric.value for metric in sorted(history, key=lambda m: (m.step, m.timestamp))}
    return sorted(latest.items())
