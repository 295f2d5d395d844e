"""Jobs on this machine through submitit's local executor, each on its own GPUs, at most N at once.

submitit starts every job it is given at once, so this executor holds the payloads and starts one only when
a slot, and on a GPU machine enough free GPUs, are there. A job's id is the process id of its submitit
controller. Jobs re-attached from an earlier launcher keep their slots and their GPUs until they end.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths

from ...errors import SpecError
from ...schema import Status
from .base import Executor, JobHandle, JobResult, JobStatus, read_result


@dataclass(frozen=True)
class LocalResources:
    tasks_per_node: int  # training processes per job
    timeout_min: int
    # Jobs at once.
    slots: int
    # GPUs each job sees (0 on a CPU-only machine), from `visible_gpus`.
    gpus_per_job: int = 0
    visible_gpus: tuple[int, ...] = ()


def local_slots(max_parallel: int | None, gpus_per_job: int, visible_gpus: Sequence[int]) -> int:
    """Jobs at once: --max-parallel, else one per `gpus_per_job` visible GPUs (one on a CPU-only machine).

    A SpecError (one line) when the slots would need more GPUs than are visible."""
    if not gpus_per_job:
        return max_parallel or 1
    fits = len(visible_gpus) // gpus_per_job
    if fits == 0:
        raise SpecError(f"--gpus-per-node={gpus_per_job} is not valid here: {len(visible_gpus)} GPU(s) visible")
    slots = max_parallel or fits
    if slots > fits:
        raise SpecError(f"--max-parallel={slots} x --gpus-per-node={gpus_per_job} needs {slots * gpus_per_job} GPUs, "
                        f"{len(visible_gpus)} are visible; use --max-parallel {fits} or fewer")
    return slots


class LocalExecutor(Executor):
    """Starts payloads as local jobs when slots free up and follows them, also those an earlier launcher started."""

    def __init__(self, function, folder: Path, resources: LocalResources):
        super().__init__(function)
        self.pattern = folder / "%j"
        self.resources = resources
        self.free_gpus = list(resources.visible_gpus)
        self._waiting: list[tuple[str, Any]] = []
        self._handles: dict[str, JobHandle] = {}
        self._jobs: dict[str, submitit.local.local.LocalJob] = {}  # started by this executor
        self._ended: set[str] = set()

    def submit(self, payloads: Sequence[tuple[str, Any]]) -> None:
        self._waiting += list(payloads)
        self._start_waiting()

    def attach(self, key: str, handle: JobHandle) -> bool:
        """Follow a job of an earlier launcher if its controller still runs; it keeps its slot and GPUs."""
        if not _alive(int(handle.job_id)):
            return False
        self._handles[key] = handle
        self.free_gpus = [gpu for gpu in self.free_gpus if gpu not in handle.gpus]
        return True

    def statuses(self) -> dict[str, JobStatus]:
        for key in self._handles:
            if key not in self._ended and self._state(key) not in (Status.RUNNING,):
                self._ended.add(key)
                self.free_gpus += [gpu for gpu in self._handles[key].gpus if gpu in self.resources.visible_gpus]
        self._start_waiting()
        statuses = {key: JobStatus(Status.PENDING) for key, _ in self._waiting}
        statuses |= {key: JobStatus(self._state(key)) for key in self._handles}
        return statuses

    def result(self, key: str) -> JobResult:
        return read_result(JobPaths(self.pattern, job_id=self._handles[key].job_id))

    def handles(self) -> dict[str, JobHandle]:
        return dict(self._handles)

    def _running(self) -> int:
        return sum(1 for key in self._handles if key not in self._ended)

    def _start_waiting(self) -> None:
        needed = self.resources.gpus_per_job
        while self._waiting and self._running() < self.resources.slots and len(self.free_gpus) >= needed:
            key, payload = self._waiting.pop(0)
            gpus, self.free_gpus = tuple(self.free_gpus[:needed]), self.free_gpus[needed:]
            executor = submitit.LocalExecutor(folder=self.pattern)
            executor.update_parameters(timeout_min=self.resources.timeout_min,
                                       tasks_per_node=self.resources.tasks_per_node, gpus_per_node=len(gpus),
                                       visible_gpus=gpus)
            job = executor.submit(self.function, payload)
            self._jobs[job.job_id] = job
            self._handles[key] = JobHandle(job.job_id, gpus)

    def _state(self, key: str) -> Status:
        job_id = self._handles[key].job_id
        job = self._jobs.get(job_id)
        if job is not None:
            if job.state == "RUNNING":
                return Status.RUNNING
        elif _alive(int(job_id)):  # started by an earlier launcher that is gone; the job itself goes on
            return Status.RUNNING
        finished = JobPaths(self.pattern, job_id=job_id).result_pickle.exists()
        return Status.FINISHED if finished else Status.FAILED


def _alive(pid: int) -> bool:
    """Whether `pid` is still a submitit job controller (not a process that reused the number)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit" in command
