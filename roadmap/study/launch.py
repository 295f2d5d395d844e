"""A study launched as jobs (local processes or a SLURM array): plan, skip, submit or re-attach, follow, collect.

The launcher creates the experiment and the parent run before it submits; every job logs its nested run
under that parent. The job ids go into the launch folder, so that running the same command again submits
nothing that is finished, queued or running, resubmits what failed, and collects once all are done.
"""
from __future__ import annotations

import dataclasses
import os
import time

import click
import torch

from ..errors import SpecError
from ..schema import Status, Tag, launch_folder, study_run_name
from .executors.base import ACTIVE, JobResult, JobState
from .executors.local import LocalJobs, LocalResources
from .executors.slurm import SlurmJobs, SlurmResources, check_slurm
from .jobs import StudyJob
from .launch_record import JobRecord, LaunchRecord
from .options import LaunchSettings, StudyOptions
from .progress_table import ProgressTable, Row
from .study import collect, experiment_description, parent_description, study_params, validate_study
from .unit import CLAIMED, SKIPPED, UnitOfWork, UnitOutcome, plan_units

# Seconds between two looks at the jobs (ROADMAP_POLL_S overrides: the tests poll faster).
POLL_S = float(os.environ.get("ROADMAP_POLL_S", "5"))
CLUSTER_ONLY = ("slurm_partition", "slurm_options", "mem_gb")


def check_launch(study: StudyOptions) -> None:
    """Every check of the launch that can fail before anything is submitted: one line, exit code 2."""
    launch, defaults = study.launch, LaunchSettings()
    if launch.launcher != "inline" and "WORLD_SIZE" in os.environ:
        raise SpecError(f"--launcher {launch.launcher} starts its own training processes; run it without torchrun")
    if launch.launcher == "inline":
        given = [name for name in ("max_parallel", "nodes", "gpus_per_node", "cpus_per_task", "timeout_min", "wait",
                                   *CLUSTER_ONLY) if getattr(launch, name) != getattr(defaults, name)]
        if given:
            option = "--no-wait" if given[0] == "wait" else f"--{given[0].replace('_', '-')}"
            raise SpecError(f"{option} applies to --launcher local or slurm, not inline (this process trains "
                            "every step itself)")
    elif launch.launcher == "local":
        given = [name for name in CLUSTER_ONLY if getattr(launch, name) != getattr(defaults, name)]
        if given:
            raise SpecError(f"--{given[0].replace('_', '-')} applies to --launcher slurm, not local")
        if not launch.wait:
            raise SpecError("--no-wait needs --launcher slurm: a local launch starts each job when a slot frees up, "
                            "so it stays until the last one ends (rerun it after an interruption: nothing is lost)")
        if study.run.device == "cuda" and torch.cuda.device_count() < launch.gpus_per_node:
            raise SpecError(f"--gpus-per-node={launch.gpus_per_node} is not valid here: {torch.cuda.device_count()} "
                            "GPU(s) visible")
    else:
        check_slurm()
        _warn_about_the_store(study.tracking_uri)
    _check_writable(study)


def _warn_about_the_store(tracking_uri: str | None) -> None:
    from ..tracking import check_tracking_uri, is_shared_server

    uri = check_tracking_uri(tracking_uri)
    if not is_shared_server(uri):
        click.echo(f"warning: tracking store {uri} is a local file; jobs on other nodes need a shared file system to "
                   "reach it and many writers can lock it: run `mlflow server` on a database and pass --tracking-uri "
                   "http://HOST:PORT (README, 'Run on a cluster')", err=True)


def _check_writable(study: StudyOptions) -> None:
    """The checkpoint folder can be made and written, checked on its deepest existing folder (nothing is left)."""
    existing = study.checkpoint_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".write-probe-{os.getpid()}"
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SpecError(f"--checkpoint-dir {study.checkpoint_dir} cannot be written ({error.strerror or error}); the "
                        "jobs keep their checkpoints there: choose a folder every job can write") from None


def run_launched_study(study: StudyOptions) -> int:
    """Launch the study's jobs (or re-attach to them), follow them unless --no-wait, and collect. Exit code."""
    from ..tracking import Tracker, absolute_uri

    # Jobs may start in another working directory: every path they get is absolute.
    study = dataclasses.replace(study, checkpoint_dir=study.checkpoint_dir.resolve(),
                                tracking_uri=absolute_uri(study.tracking_uri))
    validate_study(study)
    start = time.perf_counter()
    tracker = Tracker(study.tracking_uri, study.experiment, description=experiment_description(study))
    folder = launch_folder(study.checkpoint_dir, study.experiment)
    record = LaunchRecord.load(folder, study.launch.launcher)
    if not (record.study_run_id and tracker.reopen_study(record.study_run_id)):
        record.study_run_id = tracker.start_study(study_run_name(study.roadmap.name), study_params(study),
                                                  {Tag.ROADMAP: study.roadmap.name}, parent_description(study))
    record.save(folder)
    launcher = _Launcher(study, record, folder)
    click.echo(f"{study.roadmap.title}: {len(study.steps)} steps x {len(study.seeds)} seed(s), preset "
               f"{study.preset.name}, {study.launch.launcher} launch of {launcher.processes} process(es) per job on "
               f"{study.run.device}; MLflow {tracker.tracking_uri} experiment {study.experiment!r}, parent run "
               f"{record.study_run_id}; launch folder {folder}")
    launcher.plan(tracker)
    if not study.launch.wait:
        click.echo("not waiting (--no-wait): run the same command again to follow the jobs and write the results; "
                   "it submits nothing that is finished, queued or running")
        return 0
    outcomes = launcher.follow()
    code = collect(study, tracker, record.study_run_id, outcomes, time.perf_counter() - start)
    failed = [outcome for outcome in outcomes if outcome.status == Status.FAILED]
    tracker.end_study(record.study_run_id, "FAILED" if failed else "FINISHED")
    for outcome in failed:
        click.echo(f"FAILED {outcome.step} seed {outcome.seed}: {outcome.message}", err=True)
    if failed:
        steps = sorted({outcome.step for outcome in failed})
        click.echo(f"failed steps: {', '.join(steps)}; fix the cause and run the same command again: it resubmits "
                   "only those", err=True)
    elsewhere = [outcome for outcome in outcomes if outcome.status == CLAIMED]
    if elsewhere:
        click.echo(f"{len(elsewhere)} run(s) were being trained by another launch; run the same command again once it "
                   "is done to collect them")
    return code


class _Launcher:
    """The jobs of one launch: which units to submit, which to follow, and what became of each."""

    def __init__(self, study: StudyOptions, record: LaunchRecord, folder):
        self.study, self.record, self.folder = study, record, folder
        self.units = {unit.key: unit for unit in plan_units(study, record.study_run_id)}
        self.outcomes: dict[str, UnitOutcome] = {}
        self.waiting: list[UnitOfWork] = []  # local: not started yet, for want of a free slot
        self.restarts: dict[str, int] = {}
        launch = study.launch
        self.processes = launch.processes_per_job
        workers = study.resolve(study.steps[0]).data.workers
        if launch.launcher == "slurm":
            gpus = launch.gpus_per_node if study.run.device == "cuda" else 0
            cpus = launch.cpus_per_task or workers + 1
            self.jobs = SlurmJobs(folder / "jobs", SlurmResources(
                nodes=launch.nodes, tasks_per_node=launch.gpus_per_node, gpus_per_node=gpus, cpus_per_task=cpus,
                timeout_min=launch.timeout_min, mem_gb=launch.mem_gb, partition=launch.slurm_partition,
                options=launch.slurm_options, max_parallel=launch.max_parallel, job_name=f"roadmap-{study.experiment}"))
            self.slots = None
        else:
            visible = list(range(torch.cuda.device_count())) if study.run.device == "cuda" else []
            self.slots = launch.max_parallel or max(1, len(visible) // launch.gpus_per_node)
            self.free_gpus = visible
            cpus = launch.cpus_per_task or max(1, (os.cpu_count() or 1) // (self.slots * self.processes))
            self.jobs = LocalJobs(folder / "jobs", LocalResources(launch.gpus_per_node, launch.timeout_min))
            self.gpus_of: dict[str, list[int]] = {}
        self.job = StudyJob(cpus_per_task=cpus)

    def plan(self, tracker) -> None:
        """Skip what is finished, re-attach to what is queued or running, submit the rest."""
        recorded = {key: job.job_id for key, job in self.record.jobs.items() if key in self.units}
        states = self.jobs.statuses(list(recorded.values()))
        submit, attached = [], 0
        for key, unit in self.units.items():
            finished = tracker.find_finished(unit.step, unit.seed, unit.config_hash)
            if finished and not self.study.force:
                self.outcomes[key] = UnitOutcome(key, unit.step, unit.seed, SKIPPED, run_id=finished)
            elif key in recorded and states[recorded[key]].state in ACTIVE:
                attached += 1
            else:
                submit.append(unit)
        click.echo(f"{len(self.outcomes)} run(s) already finished, {attached} job(s) queued or running, "
                   f"{len(submit)} to submit")
        if self.slots is None:
            self._submit_array(submit)
        else:
            self.waiting = submit
            self._start_local()

    def _submit_array(self, units: list[UnitOfWork]) -> None:
        if not units:
            return
        job_ids = self.jobs.submit(self.job, units)
        for unit, job_id in zip(units, job_ids):
            self.record.jobs[unit.key] = JobRecord(job_id, unit.step, unit.seed)
        self.record.save(self.folder)
        click.echo(f"submitted {len(units)} job(s) as SLURM array {job_ids[0].split('_')[0]}")

    def _start_local(self) -> None:
        running = sum(1 for key in self._followed() if key in self.gpus_of)
        while self.waiting and running < self.slots:
            unit = self.waiting.pop(0)
            gpus = [self.free_gpus.pop(0) for _ in range(self.study.launch.gpus_per_node)] if self.free_gpus else []
            job_id = self.jobs.submit(self.job, unit, gpus)
            self.gpus_of[unit.key] = gpus
            self.record.jobs[unit.key] = JobRecord(job_id, unit.step, unit.seed)
            self.record.save(self.folder)
            running += 1

    def _followed(self) -> list[str]:
        return [key for key in self.units if key not in self.outcomes and key in self.record.jobs
                and all(unit.key != key for unit in self.waiting)]

    def follow(self) -> list[UnitOutcome]:
        """Poll until every unit has an outcome, showing the table; the outcomes in plan order."""
        table = ProgressTable(f"{self.study.launch.launcher} launch")
        while True:
            followed = self._followed()
            statuses = self.jobs.statuses([self.record.jobs[key].job_id for key in followed])
            for key in followed:
                status = statuses[self.record.jobs[key].job_id]
                self.restarts[key] = status.restarts
                if status.state not in ACTIVE:
                    self._ended(key, self.jobs.result(self.record.jobs[key].job_id))
            if self.slots is not None:
                self._start_local()
            table.show(self._rows(statuses))
            if len(self.outcomes) == len(self.units):
                return [self.outcomes[key] for key in self.units]
            time.sleep(POLL_S)

    def _ended(self, key: str, result: JobResult) -> None:
        unit = self.units[key]
        if self.slots is not None:
            self.free_gpus += self.gpus_of.pop(key, [])
        if isinstance(result.value, UnitOutcome):
            self.outcomes[key] = result.value
        else:
            message = f"{result.error or 'no result'} (job {self.record.jobs[key].job_id}; log {result.log})"
            self.outcomes[key] = UnitOutcome(key, unit.step, unit.seed, Status.FAILED, message=message)

    def _rows(self, statuses) -> list[Row]:
        rows = []
        for key, unit in self.units.items():
            job = self.record.jobs.get(key)
            label = f"{unit.step} seed {unit.seed}"
            outcome = self.outcomes.get(key)
            if outcome is not None:
                state = {Status.FINISHED: "finished", Status.DIVERGED: "failed", SKIPPED: "finished",
                         CLAIMED: "elsewhere"}.get(outcome.status, "failed")
                note = (f"top-1 {outcome.result.top1:.2f} %" if outcome.result and outcome.status == Status.FINISHED
                        else "finished earlier" if outcome.status == SKIPPED else outcome.message[:100])
            elif job is None or any(waiting.key == key for waiting in self.waiting):
                state, note = "pending", "waiting for a free slot"
            else:
                status = statuses.get(job.job_id)
                state = str(status.state) if status else JobState.PENDING
                note = f"restarted {status.restarts} x" if status and status.restarts else ""
            rows.append(Row(label, job.job_id if job else "", state, note))
        return rows
