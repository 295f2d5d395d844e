"""The end of a study: counts, where the time went, the table and figures of its plan, Δs on its runs."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import click

from ..schema import Metric, Status, Tag
from ..training.result import TrainResult
from ..variants import Ablation
from .settings import Study
from .unit import UnitOutcome


def results_folder(study: Study) -> Path:
    """results/<experiment>/ for the cumulative roadmap, results/<experiment>/leave-one-out/ for the other mode."""
    folder = study.results_dir / study.experiment
    return folder if study.plan.ablation == Ablation.CUMULATIVE else folder / str(study.plan.ablation)


def collect(study: Study, tracker, study_run_id: str, outcomes: Sequence[UnitOutcome], seconds: float) -> int:
    """After the units ran: counts, time split, results table, figures, Δs on the step runs, where to look."""
    from ..report.plot import draw_figures
    from ..report.runs_table import load_runs
    from ..report.tables import to_markdown

    statuses = [outcome.status for outcome in outcomes]
    click.echo(f"study done in {seconds:.1f} s wall time ({statuses.count(Status.FINISHED)} finished, "
               f"{statuses.count(Status.SKIPPED)} skipped, {statuses.count(Status.CLAIMED)} being trained elsewhere, "
               f"{statuses.count(Status.DIVERGED)} diverged, {statuses.count(Status.FAILED)} failed)")
    trained = [outcome.result for outcome in outcomes if outcome.result is not None]
    if trained:
        click.echo(time_split(trained))
    runs = load_runs(study.tracking_uri, study.experiment)
    summary, (csv_path, md_path) = write_study_table(study, runs)
    figures = [path for _, paths, _ in draw_figures(summary, study.plan.roadmap, results_folder(study))
               for path in paths]
    tracker.log_study_artifacts(study_run_id, [csv_path, md_path, *figures])
    if study.plan.ablation == Ablation.CUMULATIVE:
        _annotate_deltas(study, tracker, summary, runs)
    click.echo(to_markdown(summary, study.plan.roadmap.paper_table).rstrip())  # it ends with the agreement line
    click.echo(f"results: {csv_path} and {md_path}; figures: {', '.join(str(p) for p in figures)}")
    url = tracker.runs_view_url()
    click.echo(f"in MLflow: {url} (parent run {study_run_id}, which holds the plan, the chart and the table as "
               f"artifacts)" + ("" if url.startswith(tracker.tracking_uri) else
                                f"; start the UI with: mlflow ui --backend-store-uri {tracker.tracking_uri}"))
    failed = [outcome for outcome in outcomes if outcome.status in (Status.DIVERGED, Status.FAILED)]
    return 1 if failed else 0


def write_study_table(study: Study, runs=None):
    """The summary of this study's plan, written to its results folder: (summary, (csv path, md path))."""
    from ..report.results import study_summary
    from ..report.tables import write_results

    summary = study_summary(study.tracking_uri, study.experiment, study.plan, runs=runs)
    return summary, write_results(summary, results_folder(study), study.plan.roadmap.paper_table)


def _annotate_deltas(study: Study, tracker, summary, runs) -> None:
    """Each variant's Δ to its baseline (points, 95 % interval, p) on its finished runs of this plan's seeds."""
    from ..report.results import plan_runs

    mine = plan_runs(runs, study.plan)
    for row in summary.to_dict("records"):
        chosen = mine[(mine["config_hash"] == row["config_hash"]) & (mine["status"] == Status.FINISHED)]
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
