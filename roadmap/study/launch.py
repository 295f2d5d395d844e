"""A launch: the units of a study handed to an executor, followed until each has an outcome.

For local and SLURM jobs the job of each unit goes into the launch folder's record, so that running the same
command again submits nothing that is finished, queued or running, resubmits what failed, and collects once
all are done. Inline units run in this process and need no record.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from ..schema import ACTIVE, Status
from .executors.base import Executor, JobHandle, JobResult
from .launch_record import JobRecord, LaunchRecord
from .progress_table import ProgressTable, Row
from .unit import UnitOfWork, UnitOutcome

# Seconds between two looks at the jobs (ROADMAP_POLL_S overrides: the tests poll faster).
POLL_S = float(os.environ.get("ROADMAP_POLL_S", "5"))


class Launch:
    """The units of one study on one executor: which to submit, which to follow, and what became of each."""

    def __init__(self, units: list[UnitOfWork], executor: Executor, title: str,
                 record: LaunchRecord | None = None, folder: Path | None = None):
        self.units = {unit.key: unit for unit in units}
        self.executor, self.title = executor, title
        self.record, self.folder = record, folder
        self.outcomes: dict[str, UnitOutcome] = {}

    def start(self, tracker=None, force: bool = False) -> None:
        """Skip what MLflow has finished (when a tracker is given), re-attach recorded jobs that are still queued
        or running, submit the rest (a recorded job that ended without a finished run is submitted again)."""
        for key, unit in self.units.items():
            finished = tracker.find_finished(unit.seed, unit.config_hash) if tracker else None
            if finished and not force:
                self.outcomes[key] = UnitOutcome(key, unit.name, unit.seed, Status.SKIPPED, run_id=finished,
                                                 message="finished earlier")
        recorded = self.record.jobs if self.record else {}
        attached = [key for key in self.units if key not in self.outcomes and key in recorded
                    and self.executor.attach(key, JobHandle(recorded[key].job_id, recorded[key].gpus))]
        statuses = self.executor.statuses() if attached else {}
        active = {key for key in attached if statuses[key].state in ACTIVE}
        submit = [unit for key, unit in self.units.items() if key not in self.outcomes and key not in active]
        if self.record is not None:
            click.echo(f"{len(self.outcomes)} run(s) already finished, {len(active)} job(s) queued or running, "
                       f"{len(submit)} to submit")
        self.executor.submit([(unit.key, unit) for unit in submit])
        self._save()

    def follow(self, show_table: bool = True) -> list[UnitOutcome]:
        """Poll until every unit has an outcome, showing the table; the outcomes in plan order."""
        table = ProgressTable(self.title) if show_table else None
        while True:
            statuses = self.executor.statuses()
            for key, status in statuses.items():
                if key not in self.outcomes and status.state not in ACTIVE:
                    self._ended(key, self.executor.result(key))
            self._save()
            if table is not None:
                table.show(self._rows(statuses))
            if len(self.outcomes) == len(self.units):
                return [self.outcomes[key] for key in self.units]
            time.sleep(POLL_S)

    def _save(self) -> None:
        if self.record is None or self.folder is None:
            return
        for key, handle in self.executor.handles().items():
            known = self.record.jobs.get(key)
            if known is None or known.job_id != handle.job_id:
                unit = self.units[key]
                self.record.jobs[key] = JobRecord(handle.job_id, unit.name, unit.seed, handle.gpus)
        self.record.save(self.folder)

    def _ended(self, key: str, result: JobResult) -> None:
        unit = self.units[key]
        if isinstance(result.value, UnitOutcome):
            self.outcomes[key] = result.value
        else:
            job = self.executor.handles().get(key)
            message = f"{result.error or 'no result'} (job {job.job_id if job else '?'}; log {result.log})"
            self.outcomes[key] = UnitOutcome(key, unit.name, unit.seed, Status.FAILED, message=message)

    def _rows(self, statuses) -> list[Row]:
        rows, handles = [], self.executor.handles()
        for key, unit in self.units.items():
            job = handles.get(key)
            label = f"{unit.name} seed {unit.seed}"
            outcome = self.outcomes.get(key)
            if outcome is not None:
                state = Status.FAILED if outcome.status == Status.DIVERGED else outcome.status
                note = (f"top-1 {outcome.result.top1:.2f} %" if outcome.result and outcome.status == Status.FINISHED
                        else outcome.message[:100])
            elif key in statuses:
                status = statuses[key]
                state = status.state
                note = (f"restarted {status.restarts} x" if status.restarts
                        else "waiting for a free slot" if job is None else "")
            else:
                state, note = Status.PENDING, ""
            rows.append(Row(label, job.job_id if job else "", state, note))
        return rows
