"""Jobs on SLURM through submitit: one job array per submission, states from squeue and sacct."""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import submitit
from submitit.core.utils import JobPaths

from ...errors import SpecError
from ...schema import Status
from .base import Executor, JobHandle, JobResult, JobStatus, last_error_line, read_result

# squeue's words for a job that is still in the queue or on a node.
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}
REQUEUED_STATES = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"}
COMMAND_TIMEOUT_S = 60


@dataclass(frozen=True)
class SlurmResources:
    """What each job of the array asks SLURM for."""

    nodes: int
    tasks_per_node: int  # one training process per task (per GPU)
    gpus_per_node: int  # 0 on a CPU-only cluster
    cpus_per_task: int
    timeout_min: int
    mem_gb: int | None = None
    partition: str | None = None
    # --KEY=VALUE pairs for sbatch (account, qos, constraint, ...).
    options: tuple[tuple[str, str], ...] = ()
    max_parallel: int | None = None
    job_name: str = "roadmap"


def check_slurm() -> None:
    """A one-line SpecError unless SLURM's commands are here and its accounting (sacct) answers."""
    missing = [command for command in ("sbatch", "squeue", "sacct") if shutil.which(command) is None]
    if missing:
        raise SpecError(f"--launcher slurm needs SLURM's {', '.join(missing)} on PATH and none is here; run on a "
                        "SLURM login node, or use --launcher local (this machine) or inline")
    probe = _run(["sacct", "-n", "-X", "-j", "1", "--parsable2", "-o", "JobID"], check=False)
    if probe.returncode != 0:
        raise SpecError(f"SLURM's accounting does not answer (sacct: {last_error_line(probe.stderr) or 'failed'}); "
                        "the launcher needs sacct to see how jobs end")


class SlurmExecutor(Executor):
    """Submits payloads as one job array per `submit` and follows them by job id, also from a later process."""

    def __init__(self, function, folder: Path, resources: SlurmResources):
        super().__init__(function)
        # submitit keeps each job's pickles and logs in folder/<job id>/.
        self.pattern = folder / "%j"
        self.resources = resources
        self._handles: dict[str, JobHandle] = {}

    def submit(self, payloads: Sequence[tuple[str, Any]]) -> None:
        """One array of len(payloads) jobs (at most max_parallel at once)."""
        if not payloads:
            return
        executor = submitit.AutoExecutor(folder=self.pattern, cluster="slurm")
        r = self.resources
        parameters: dict[str, Any] = dict(
            name=r.job_name, nodes=r.nodes, tasks_per_node=r.tasks_per_node, cpus_per_task=r.cpus_per_task,
            timeout_min=r.timeout_min, slurm_additional_parameters=dict(r.options),
        )
        if r.gpus_per_node:
            parameters["gpus_per_node"] = r.gpus_per_node
        if r.mem_gb:
            parameters["mem_gb"] = r.mem_gb
        if r.partition:
            parameters["slurm_partition"] = r.partition
        if r.max_parallel:
            parameters["slurm_array_parallelism"] = r.max_parallel
        executor.update_parameters(**parameters)
        try:
            jobs = executor.map_array(self.function, [payload for _, payload in payloads])
        except subprocess.CalledProcessError as error:
            output = error.output.decode(errors="replace") if isinstance(error.output, bytes) else str(error.output)
            raise SpecError(f"sbatch refused the job array: {last_error_line(output) or error}") from None
        for (key, _), job in zip(payloads, jobs):
            self._handles[key] = JobHandle(job.job_id)
        click.echo(f"submitted {len(jobs)} job(s) as SLURM array {jobs[0].job_id.split('_')[0]}")

    def attach(self, key: str, handle: JobHandle) -> bool:
        """Follow a job of an earlier launcher; SLURM knows it whatever became of that launcher."""
        self._handles[key] = handle
        return True

    def statuses(self) -> dict[str, JobStatus]:
        """Each job's state now: squeue for queued and running jobs, sacct for finished ones and restarts."""
        by_id = job_statuses([handle.job_id for handle in self._handles.values()])
        return {key: by_id[handle.job_id] for key, handle in self._handles.items()}

    def result(self, key: str) -> JobResult:
        """A finished job's return value, or why it failed and where its log is."""
        return read_result(JobPaths(self.pattern, job_id=self._handles[key].job_id))

    def handles(self) -> dict[str, JobHandle]:
        return dict(self._handles)


def job_statuses(job_ids: Sequence[str]) -> dict[str, JobStatus]:
    """Each job's state now: squeue for queued and running jobs, sacct for finished ones and restarts."""
    if not job_ids:
        return {}
    queued = _squeue(job_ids)
    attempts = _sacct(job_ids)
    statuses = {}
    for job_id in job_ids:
        history = attempts.get(job_id, [])
        restarts = max(0, len(history) - 1)
        state = queued.get(job_id) or (history[-1] if history else "PENDING")
        statuses[job_id] = JobStatus(_table_state(state, restarts), restarts, state)
    return statuses


def _table_state(state: str, restarts: int) -> Status:
    if state == "PENDING":
        return Status.REQUEUED if restarts else Status.PENDING
    if state in RUNNING_STATES:
        return Status.RUNNING
    if state in REQUEUED_STATES:
        return Status.REQUEUED
    return Status.FINISHED if state == "COMPLETED" else Status.FAILED


def _squeue(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: state} of the jobs still queued or running (array tasks one by one)."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    output = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)], check=False).stdout
    states = {}
    for line in output.splitlines():
        job_id, _, state = line.partition("|")
        for expanded in _expand(job_id.strip()):
            states[expanded] = state.strip()
    return states


def _sacct(job_ids: Sequence[str]) -> dict[str, list[str]]:
    """{job id: [state of each attempt, oldest first]}; a requeued job has one line per attempt (-D)."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    output = _run(["sacct", "-n", "-X", "-D", "--parsable2", "-o", "JobID,State", "-j", ",".join(arrays)],
                  check=False).stdout
    attempts: dict[str, list[str]] = {}
    for line in output.splitlines():
        job_id, _, state = line.partition("|")
        for expanded in _expand(job_id.strip()):
            attempts.setdefault(expanded, []).append(state.split()[0] if state.strip() else "UNKNOWN")
    return attempts


def _expand(job_id: str) -> list[str]:
    """'123_[0-2,5%2]' -> ['123_0', '123_1', '123_2', '123_5']; any other id as it is."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    expanded = []
    for part in match[2].split(","):
        low, _, high = part.partition("-")
        expanded += [f"{match[1]}_{task}" for task in range(int(low), int(high or low) + 1)]
    return expanded


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=check)
