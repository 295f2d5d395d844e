"""A study: plan every (step, seed), skip what is finished, execute the rest, collect, write table and figures."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import click
import torch

from ..data import validate_data
from ..schema import Metric, Status, Tag, study_run_name
from ..training import distributed
from ..training.result import TrainResult
from .options import StudyOptions
from .unit import CLAIMED, SKIPPED, DatasetCache, UnitOutcome, cpu_threads, plan_units, run_unit


def validate_study(study: StudyOptions) -> None:
    """Every check that can fail before the first step trains: specs, batch splits, data."""
    for step in study.steps:
        study.resolve(step)
    validate_data(study.resolve(study.steps[0]).data)


def study_params(study: StudyOptions) -> dict[str, str]:
    return {"roadmap": study.roadmap.name, "steps": ",".join(s.name for s in study.steps),
            "seeds": ",".join(map(str, study.seeds)), "preset": study.preset.name, "data": study.data.source,
            "launcher": study.launch.launcher, "report": study.report}


def experiment_description(study: StudyOptions) -> str:
    """The experiment's Markdown description in MLflow: what it holds and how to compare steps."""
    roadmap = study.roadmap
    return (
        f"**{roadmap.title}** — {roadmap.description}. Every step of the roadmap is a nested run "
        "(named `<step> seed <k>`) under the parent run of the invocation that trained it (`run_kind = study`).\n\n"
        "*Compare steps*: expand a parent run (⊞ in its Run Name cell), select step runs and press **Compare**; "
        "plot `val_top1` against the epoch for the learning curves, or `top1`, `delta_top1` and `gmacs` across "
        "steps. The parent run's artifacts hold the roadmap chart (`roadmap.png`, `.svg`), accuracy vs GMACs, "
        "and the results table (`roadmap.csv`, `roadmap.md`); each step run holds its final weights "
        "(`weights.safetensors`, load them with `roadmap.load_trained('runs:/<run id>')`), its resolved "
        "configuration (`config.json`) and its validation predictions (`predictions.csv`).\n\n"
        f"Data and scale of the latest study: `{study.data.source}` data, preset `{study.preset.name}`. "
        "GMACs are multiply-accumulates of conv + linear layers (the paper's 'GFLOPs')."
    )


def run_study(study: StudyOptions) -> int:
    """Train and evaluate every (step, seed), tracked in MLflow; write results/<experiment>/. Exit code."""
    if study.launch.launcher != "inline":
        from .launch import run_launched_study

        return run_launched_study(study)
    world = distributed.init_distributed(study.run.device)
    validate_study(study)
    if study.run.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(world.world_size, study.resolve(study.steps[0]).data.workers))
    tracker = _open_tracker(study) if world.is_main else None
    start = time.perf_counter()
    echo = click.echo if world.is_main else (lambda *_a, **_k: None)
    echo(f"{study.roadmap.title}: {len(study.steps)} steps x {len(study.seeds)} seed(s), preset {study.preset.name}, "
         f"data {study.data.source}, device {study.run.device} x{world.world_size}"
         f"{f' ({torch.get_num_threads()} threads)' if study.run.device == 'cpu' else ''}, {study.run.precision}; "
         f"MLflow {tracker.tracking_uri if tracker else ''} experiment {study.experiment!r}")
    parent = tracker.start_study(study_run_name(study.roadmap.name), study_params(study),
                                 {Tag.ROADMAP: study.roadmap.name}, parent_description(study)) if tracker else None
    parent = distributed.all_gather_objects(parent)[0]
    cache = DatasetCache()
    try:
        outcomes = [run_unit(unit, cache) for unit in plan_units(study, parent)]
        code = collect(study, tracker, parent, outcomes, time.perf_counter() - start) if world.is_main else 0
    except BaseException as error:
        if tracker is not None:
            tracker.end_study(parent, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        tracker.end_study(parent, "FINISHED")
    distributed.cleanup()
    return code


def _open_tracker(study: StudyOptions):
    from ..tracking import Tracker

    return Tracker(study.tracking_uri, study.experiment, description=experiment_description(study))


def parent_description(study: StudyOptions) -> str:
    seeds = ",".join(map(str, study.seeds))
    return (f"{study.roadmap.title}: steps {study.steps[0].name} to {study.steps[-1].name} "
            f"({len(study.steps)}), seeds {seeds}, preset `{study.preset.name}`, data `{study.data.source}`, "
            f"launcher `{study.launch.launcher}`. The chart and the table are this run's artifacts.")


def collect(study: StudyOptions, tracker, study_run_id: str, outcomes: Sequence[UnitOutcome], seconds: float) -> int:
    """After the units ran: counts, time split, results table, figures, Δs on the step runs, where to look."""
    from ..report.plot import draw_figures
    from ..report.runs_table import load_runs
    from ..report.tables import to_markdown

    statuses = [outcome.status for outcome in outcomes]
    click.echo(f"study done in {seconds:.1f} s wall time ({statuses.count(Status.FINISHED)} finished, "
               f"{statuses.count(SKIPPED)} skipped, {statuses.count(CLAIMED)} being trained elsewhere, "
               f"{statuses.count(Status.DIVERGED)} diverged, {statuses.count(Status.FAILED)} failed)")
    trained = [outcome.result for outcome in outcomes if outcome.result is not None]
    if trained:
        click.echo(time_split(trained))
    runs = load_runs(study.tracking_uri, study.experiment)
    summary, (csv_path, md_path) = write_study_table(study, runs)
    out = study.results_dir / study.experiment
    figures = [path for _, paths, _ in draw_figures(summary, study.roadmap, out) for path in paths]
    tracker.log_study_artifacts(study_run_id, [csv_path, md_path, *figures])
    _annotate_deltas(study, tracker, summary, runs)
    click.echo(to_markdown(summary, study.roadmap.paper_table).rstrip())  # it ends with the agreement line
    click.echo(f"results: {csv_path} and {md_path}; figures: {', '.join(str(p) for p in figures)}")
    click.echo(f"in MLflow: {tracker.runs_view_url()} (parent run {study_run_id}, which holds the chart and the "
               f"table as artifacts)" + (f"; start the UI with: {_ui_command(tracker.tracking_uri)}"
                                        if not tracker.runs_view_url().startswith(tracker.tracking_uri) else ""))
    failed = [outcome for outcome in outcomes if outcome.status in (Status.DIVERGED, Status.FAILED)]
    return 1 if failed else 0


def write_study_table(study: StudyOptions, runs=None):
    """The summary of this study's steps, written to results/<experiment>/: (summary, (csv path, md path))."""
    from ..report.results import study_summary
    from ..report.tables import write_results

    summary = study_summary(study.tracking_uri, study.experiment, study.roadmap, report=study.report, runs=runs)
    summary = summary[summary["step"].isin({step.name for step in study.steps})]
    return summary, write_results(summary, study.results_dir / study.experiment, study.roadmap.paper_table)


def _ui_command(tracking_uri: str) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def _annotate_deltas(study: StudyOptions, tracker, summary, runs) -> None:
    """Each step's Δ to its parent (points, 95 % interval, p) on its runs of this study's configuration."""
    for row in summary.to_dict("records"):
        config_hash = study.config_hash(study.roadmap.step(row["step"]))
        chosen = runs[(runs["step"] == row["step"]) & (runs["config_hash"] == config_hash)
                      & (runs["status"] == Status.FINISHED)]
        metrics = {Metric.DELTA_TOP1: _finite(row["delta_top1"]), Metric.DELTA_CI_LOW: _finite(row["delta_ci_low"]),
                   Metric.DELTA_CI_HIGH: _finite(row["delta_ci_high"]), Metric.DELTA_P: _finite(row["delta_p"])}
        for run_id in chosen["run_id"]:
            tracker.annotate(run_id, metrics, {Tag.DELTA_TEST: row["delta_test"] or "none"})


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def time_split(results: Sequence[TrainResult]) -> str:
    """Where the training time of some runs went: model steps, waiting for data, and everything else."""
    train = sum(result.train_s for result in results)
    wait = sum(result.data_wait_s for result in results)
    wall = sum(result.wall_time_s for result in results)
    return (f"time split over {len(results)} trained run(s): training loops {train:.1f} s, of which waiting for "
            f"data {wait:.1f} s (+{100 * wait / max(train - wait, 1e-9):.1f} % on the model steps' "
            f"{train - wait:.1f} s); evaluation, checkpoints and MLflow logging {wall - train:.1f} s")
