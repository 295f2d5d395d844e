"""The unit of work as a submitit job: one callable for local jobs and SLURM jobs, requeued on preemption."""
from __future__ import annotations

import os

import torch
from submitit import JobEnvironment
from submitit.core.utils import DelayedSubmission
from submitit.helpers import TorchDistributedEnvironment

from ..training import distributed
from .unit import UnitOfWork, UnitOutcome, run_unit


class StudyJob:
    """Calls `run_unit` in a job's every task; a job that SLURM preempts or that reaches its time limit
    is requeued with the same unit, which resumes from its last epoch checkpoint into the same MLflow run.

    A job of several tasks (nodes x GPUs per node, or processes on a CPU machine) sets torch.distributed
    up from the job's environment, as torchrun's variables would: the engine's code path is the same.
    """

    def __init__(self, cpus_per_task: int):
        # CPU cores each task may use: its torch threads are these minus its data-loader workers.
        self.cpus_per_task = cpus_per_task

    def __call__(self, unit: UnitOfWork) -> UnitOutcome:
        environment = JobEnvironment()
        if environment.num_tasks > 1:
            # Each task keeps all of its node's GPUs visible and picks its own by LOCAL_RANK.
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if unit.run.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # More threads than the task's cores stall every OpenMP barrier (see unit.cpu_threads).
            torch.set_num_threads(max(1, self.cpus_per_task - unit.run.loader_workers()))
        try:
            return run_unit(unit)
        finally:
            distributed.cleanup()

    def checkpoint(self, unit: UnitOfWork) -> DelayedSubmission:
        """submitit's hook on preemption or timeout: run the same unit again; it resumes from last.pt."""
        return DelayedSubmission(self, unit)
