"""Running a study: its plan's units handed to the executor its launcher names, followed, then collected.

One path for every launcher. The parent run is created (or, for a re-attached launch, reopened) before
anything runs, and holds the plan (`plan.json`) from the start; jobs nest their step runs under it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import click
import torch

from ..schema import Artifact, Status, Tag, launch_folder, study_run_name
from ..training import distributed
from ..variants import HASH_VERSION
from .checks import gpus_per_job, validate_study
from .collect import collect
from .estimate import BudgetExceeded, EstimateSettings, PlanEstimate, budget_refusal, estimate_plan, plan_json
from .executors.base import Executor
from .executors.inline import InlineExecutor
from .executors.local import LocalExecutor, LocalResources, local_slots
from .executors.slurm import SlurmExecutor, SlurmResources
from .jobs import StudyJob
from .launch import Launch
from .launch_record import LaunchRecord
from .settings import Launcher, Study
from .unit import DatasetCache, cpu_threads, plan_units, run_unit


def run_study(study: Study, estimates: EstimateSettings | None = None) -> int:
    """Train and evaluate every unit of the plan, tracked in MLflow; write its results folder. Exit code.

    Before anything is logged or submitted, the plan's cost and power are estimated (`estimates`) and a plan over
    --budget-gpu-hours is refused (BudgetExceeded); plan.json carries the estimate as `plan_costs`."""
    inline = study.launch.launcher == Launcher.INLINE
    if not inline:  # jobs may start in another working directory: every path they get is absolute
        from ..tracking import absolute_uri

        study = dataclasses.replace(study, checkpoint_dir=study.checkpoint_dir.resolve(),
                                    results_dir=study.results_dir.resolve(),
                                    tracking_uri=absolute_uri(study.tracking_uri, study.tracking_patience_s))
    world = distributed.init_distributed(study.run.device) if inline else distributed.WorldInfo()
    validate_study(study)
    if inline and study.run.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(world.world_size, study.run.loader_workers()))
    start = time.perf_counter()
    tracker = _open_tracker(study) if world.is_main else None
    folder = launch_folder(study.checkpoint_dir, study.experiment)
    record = None if inline else LaunchRecord.load(folder, study.launch.launcher)
    estimates = estimates or EstimateSettings()
    estimate = estimate_plan(study, estimates) if tracker else None
    refusal = budget_refusal(estimate, estimates.budget_gpu_hours) if estimate else None
    parent = _parent_run(study, tracker, record, estimate) if tracker and not refusal else None
    parent, refusal = distributed.all_gather_objects((parent, refusal))[0]  # every process refuses, or none
    if refusal:
        raise BudgetExceeded(refusal)
    if record is not None:
        record.save(folder)
    if tracker is not None:
        _announce(study, tracker, parent, world, folder if record else None)
    units = plan_units(study, parent)
    launch = Launch(units, make_executor(study, folder), f"{study.launch.launcher} launch", record, folder)
    try:
        # Inline units claim, then check MLflow themselves; for jobs, finished runs are not even submitted.
        launch.start(None if inline else tracker, force=study.force)
        if not study.launch.wait:
            click.echo("not waiting (--no-wait): run the same command again to follow the jobs and write the "
                       "results; it submits nothing that is finished, queued or running")
            return 0
        outcomes = launch.follow(show_table=not inline)
        code = collect(study, tracker, parent, outcomes, time.perf_counter() - start, estimate) if tracker else 0
    except BaseException as error:
        if tracker is not None:
            tracker.end_study(parent, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    failed = [outcome for outcome in outcomes if outcome.status == Status.FAILED]
    if tracker is not None:
        tracker.end_study(parent, "FAILED" if failed else "FINISHED")
        _say_what_failed(outcomes)
    if inline:
        distributed.cleanup()
    return code


def make_executor(study: Study, folder) -> Executor:
    """The executor the launcher names, chosen once, with the unit of work as its callable."""
    launch = study.launch
    if launch.launcher == Launcher.INLINE:
        return InlineExecutor(functools.partial(run_unit, cache=DatasetCache()))
    if launch.launcher == Launcher.SLURM:
        # Default: the given loader workers + 1, else 10 cores per training process (9 workers sized from them).
        cpus = launch.cpus_per_task or (study.run.workers + 1 if study.run.workers is not None else 10)
        resources = SlurmResources(
            nodes=launch.nodes, tasks_per_node=launch.gpus_per_node, gpus_per_node=gpus_per_job(study),
            cpus_per_task=cpus, timeout_min=launch.timeout_min, mem_gb=launch.mem_gb,
            partition=launch.slurm_partition, options=launch.slurm_options, max_parallel=launch.max_parallel,
            job_name=f"roadmap-{study.experiment}")
        return SlurmExecutor(StudyJob(cpus_per_task=cpus), folder / "jobs", resources)
    visible = visible_gpus(study)
    slots = local_slots(launch.max_parallel, gpus_per_job(study), visible)
    cpus = launch.cpus_per_task or max(1, (os.cpu_count() or 1) // (slots * launch.processes_per_job))
    resources = LocalResources(tasks_per_node=launch.gpus_per_node, timeout_min=launch.timeout_min, slots=slots,
                               gpus_per_job=gpus_per_job(study), visible_gpus=visible)
    return LocalExecutor(StudyJob(cpus_per_task=cpus), folder / "jobs", resources)


def visible_gpus(study: Study) -> tuple[int, ...]:
    """The GPU indices this machine shows (none for a CPU study)."""
    return tuple(range(torch.cuda.device_count())) if study.run.device == "cuda" else ()


def _open_tracker(study: Study):
    from ..tracking import Tracker

    return Tracker(study.tracking_uri, study.experiment, description=experiment_description(study),
                   patience_s=study.tracking_patience_s)


def _parent_run(study: Study, tracker, record: LaunchRecord | None, estimate: PlanEstimate | None = None) -> str:
    """The parent run: the recorded one of a re-attached launch, else a new one holding the plan."""
    if record is not None and record.study_run_id and tracker.reopen_study(record.study_run_id):
        return record.study_run_id
    plan = study.plan
    run_id = tracker.start_study(study_run_name(plan.roadmap.name), study_params(study),
                                 {Tag.ROADMAP: plan.roadmap.name, Tag.ABLATION: plan.ablation,
                                  Tag.HASH_VERSION: HASH_VERSION}, parent_description(study))
    tracker.log_study_text(run_id, plan_json(plan, estimate), Artifact.PLAN)
    if record is not None:
        record.study_run_id = run_id
    return run_id


def _announce(study: Study, tracker, parent: str, world: distributed.WorldInfo, folder) -> None:
    plan = study.plan
    trained = plan.trained()
    where = (f"device {study.run.device} x{world.world_size}"
             + (f" ({torch.get_num_threads()} threads)" if study.run.device == "cpu" and folder is None else "")
             if folder is None else f"{study.launch.launcher} launch of {study.launch.processes_per_job} "
                                    f"process(es) per job on {study.run.device}; launch folder {folder}")
    click.echo(f"{plan.roadmap.title}, {plan.ablation}: {len(plan.variants)} variants ({len(trained)} to train) x "
               f"{len(plan.seeds)} seed(s), preset {plan.preset}, data {trained[0].data.source if trained else '-'}, "
               f"{where}, {trained[0].precision if trained else ''}; MLflow {tracker.tracking_uri} experiment "
               f"{study.experiment!r}, parent run {parent}")
    for variant in plan.variants:
        if not variant.trains:
            click.echo(f"  {variant.name}: not trained ({variant.note})")
    older = tracker.count_step_runs_of_other_versions(plan.roadmap.name, HASH_VERSION)
    if older:
        click.echo(f"note: {older} run(s) of {plan.roadmap.name} in experiment {study.experiment!r} come from an "
                   "earlier version of convnext-roadmap, whose configuration hash covers other fields; they stay in "
                   "MLflow but this study neither reuses them nor mixes them into its table")


def _say_what_failed(outcomes) -> None:
    failed = [outcome for outcome in outcomes if outcome.status == Status.FAILED]
    for outcome in failed:
        click.echo(f"FAILED {outcome.name} seed {outcome.seed}: {outcome.message}", err=True)
    if failed:
        names = sorted({outcome.name for outcome in failed})
        click.echo(f"failed variants: {', '.join(names)}; fix the cause and run the same command again: it runs "
                   "only those", err=True)
    elsewhere = [outcome for outcome in outcomes if outcome.status == Status.CLAIMED]
    if elsewhere:
        click.echo(f"{len(elsewhere)} run(s) were being trained by another process; run the same command again once "
                   "it is done to collect them")


def study_params(study: Study) -> dict[str, str]:
    plan = study.plan
    return {"roadmap": plan.roadmap.name, "ablation": str(plan.ablation), "upto": plan.upto,
            "variants": ",".join(plan.names()), "seeds": ",".join(map(str, plan.seeds)), "preset": plan.preset,
            "launcher": str(study.launch.launcher), "report": plan.report}


def experiment_description(study: Study) -> str:
    """The experiment's Markdown description in MLflow: what it holds and how to compare variants."""
    plan = study.plan
    return (
        f"**{plan.roadmap.title}**. Every invocation of a study is a parent run (`run_kind = study`, its mode in "
        "the `ablation` tag, its plan in `plan.json`); every (variant, seed) a nested run named `<variant> seed <k>`."
        "\n\n*Compare variants*: expand a parent run (⊞ in its Run Name cell), select step runs and press "
        "**Compare**; plot `val_top1` against the epoch for the learning curves, or `top1`, `delta_top1` and "
        "`gmacs` across variants. The parent run's artifacts hold the plan, the chart, accuracy vs GMACs and the "
        "results table (`roadmap.csv`, `roadmap.md`); each step run holds its final weights "
        "(`weights.safetensors`, load them with `roadmap.load_trained('runs:/<run id>')`), its resolved "
        "configuration (`config.json`) and its validation predictions (`predictions.csv`).\n\n"
        f"Latest study: preset `{plan.preset}`, {plan.ablation}. GMACs are multiply-accumulates of conv + linear "
        "layers (the paper's 'GFLOPs')."
    )


def parent_description(study: Study) -> str:
    plan = study.plan
    data = plan.trained()[0].data.source if plan.trained() else "-"
    return (f"{plan.roadmap.title}, {plan.ablation}: {len(plan.variants)} variants "
            f"({plan.variants[0].name} to {plan.variants[-1].name}), seeds {','.join(map(str, plan.seeds))}, preset "
            f"`{plan.preset}`, data `{data}`, launcher `{study.launch.launcher}`. The plan (`plan.json`), the chart "
            "and the table are this run's artifacts.")
