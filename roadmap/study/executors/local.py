"""Jobs on this machine through submitit's local executor, each on its own GPUs, at most N at once.

submitit starts every job it is given at once, so the launcher hands this one a job only when a slot
is free. A job's id is the process id of its submitit controller.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths

from .base import JobResult, JobState, JobStatus, read_result


@dataclass(frozen=True)
class LocalResources:
    tasks_per_node: int  # training processes per job
    timeout_min: int


class LocalJobs:
    """Starts units of work as local jobs and follows them, also those a previous launcher started."""

    def __init__(self, folder: Path, resources: LocalResources):
        self.pattern = folder / "%j"
        self.resources = resources
        self._jobs: dict[str, submitit.local.local.LocalJob] = {}

    def submit(self, function: Callable[[Any], Any], payload: Any, gpus: Sequence[int] = ()) -> str:
        """Start one job now, seeing only `gpus` (CUDA_VISIBLE_DEVICES); its id."""
        executor = submitit.LocalExecutor(folder=self.pattern)
        executor.update_parameters(timeout_min=self.resources.timeout_min, tasks_per_node=self.resources.tasks_per_node,
                                   gpus_per_node=len(gpus), visible_gpus=tuple(gpus))
        job = executor.submit(function, payload)
        self._jobs[job.job_id] = job
        return job.job_id

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {job_id: JobStatus(self._state(job_id)) for job_id in job_ids}

    def _state(self, job_id: str) -> JobState:
        job = self._jobs.get(job_id)
        if job is not None:
            if job.state == "RUNNING":
                return JobState.RUNNING
        elif _alive(int(job_id)):  # started by an earlier launcher that is gone; the job itself goes on
            return JobState.RUNNING
        return JobState.FINISHED if self._paths(job_id).result_pickle.exists() else JobState.FAILED

    def result(self, job_id: str) -> JobResult:
        """A finished job's return value, or why it failed and where its log is."""
        return read_result(JobPaths(self.pattern, job_id=job_id))

    def _paths(self, job_id: str) -> JobPaths:
        return JobPaths(self.pattern, job_id=job_id)


def _alive(pid: int) -> bool:
    """Whether `pid` is still a submitit job controller (not a process that reused the number)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit" in command
