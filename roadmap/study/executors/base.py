"""What the executors share: a job's state, its outcome, and the one-line story of a failed job."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


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
