"""What the executors share: a job's state, its outcome, and the one-line story of a failed job."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths, pickle_load


class JobState(StrEnum):
    """A job as the launcher's table shows it."""

    PENDING = "pending"
    RUNNING = "running"
    REQUEUED = "requeued"  # waiting to run again after a preemption, a time limit or `scontrol requeue`
    FINISHED = "finished"  # the unit of work returned: its outcome is in JobResult.value
    FAILED = "failed"  # it raised, was cancelled, ran out of time or memory, or its node failed


ACTIVE = (JobState.PENDING, JobState.RUNNING, JobState.REQUEUED)


@dataclass(frozen=True)
class JobStatus:
    state: JobState
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
