"""The executor protocol every launcher implements (submit units, report their statuses, collect their outcomes),
and what the executors share: a job's status, its result, and the one-line story of a failed job."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths, pickle_load

from ...schema import Status


@dataclass(frozen=True)
class JobStatus:
    # One of Status.PENDING, RUNNING, REQUEUED (still active), FINISHED (it returned) or FAILED.
    state: Status
    # How many times the job started again after its first attempt.
    restarts: int = 0
    # The scheduler's own word for it (COMPLETED, TIMEOUT, OUT_OF_MEMORY, ...), for failures.
    detail: str = ""


@dataclass(frozen=True)
class JobResult:
    """A finished job's return value, or a failed job's last error line and its log file."""

    value: Any = None
    error: str = ""
    log: Path | None = None


@dataclass(frozen=True)
class JobHandle:
    """A started job: its scheduler id (SLURM "array_task", a local controller's pid, "inline") and GPUs."""

    job_id: str
    gpus: tuple[int, ...] = ()


class Executor(ABC):
    """Runs a callable on keyed payloads somewhere, and reports on them by key.

    `submit` hands over payloads (an executor may start them later, when a slot frees up); `attach` takes
    back a job a previous launcher started; `statuses` says where every submitted or attached key stands;
    `result` is a job's outcome once it is no longer active; `handles` are the started jobs, for the
    launch record. Executors know nothing of models or MLflow: the callable does the work.
    """

    def __init__(self, function: Callable[[Any], Any]):
        self.function = function

    @abstractmethod
    def submit(self, payloads: Sequence[tuple[str, Any]]) -> None: ...

    def attach(self, key: str, handle: JobHandle) -> bool:
        """Follow a job an earlier launcher started; False when this executor cannot (it is gone)."""
        return False

    @abstractmethod
    def statuses(self) -> dict[str, JobStatus]: ...

    @abstractmethod
    def result(self, key: str) -> JobResult: ...

    @abstractmethod
    def handles(self) -> dict[str, JobHandle]: ...


def last_error_line(text: str) -> str:
    """The line of a traceback or a log that says what went wrong (its last non-empty line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def log_tail_error(path: Path | None) -> str:
    """The last non-empty line of a job's log, "" when it has none."""
    if path is None or not path.exists():
        return ""
    return last_error_line(path.read_text(errors="replace")[-20_000:])


def read_result(paths: JobPaths) -> JobResult:
    """What a submitit job left: ("success", value) or ("error", traceback) in its result pickle, or nothing."""
    log = paths.stderr
    if not paths.result_pickle.exists():
        return JobResult(error=log_tail_error(log) or "the job ended without a result", log=log)
    try:
        outcome, value = pickle_load(paths.result_pickle)
    except Exception as error:  # a pickle written by another version, or cut short
        return JobResult(error=f"unreadable result {paths.result_pickle} ({type(error).__name__})", log=log)
    if outcome == "success":
        return JobResult(value=value, log=log)
    return JobResult(error=last_error_line(str(value)) or log_tail_error(log), log=log)
