"""The end of a study: counts, where the time went, the table and figures of its plan, Δs on its runs."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import click

from ..schema import Metric, Status, Tag
from ..training.result import TrainResult
from ..variants import Ablation
from .estimate import closing_power_line
from .settings import Study
from .unit import UnitOutcome


def results_folder(study: Study) -> Path:
    """results/<experiment>/ for the cumulative roadmap, results/<experiment>/leave-one-out/ for the other mode."""
    folder = study.results_dir / study.experiment
    return folder if study.plan.ablation == Ablation.CUMULATIVE else folder / str(study.plan.ablation)


def collect(study: Study, tracker, study_run_id: str, outcomes: Sequence[UnitOutcome], seconds: float,
            estimate=None) -> int:
    """After the units ran: counts, time split, results table, figures, Δs on the step runs, where to look."""
    from ..report.plot import draw_figures
    from ..report.runs_table import load_runs
    from ..report.tables import terminal_summary

    statuses = [outcome.status for outcome in outcomes]
    click.echo(f"study done in {seconds:.1f} s wall time ({statuses.count(Status.FINISHED)} finished, "
               f"{statuses.count(Status.SKIPPED)} skipped, {statuses.count(Status.CLAIMED)} being trained elsewhere, "
               f"{statuses.count(Status.DIVERGED)} diverged, {statuses.count(Status.FAILED)} failed)")
    trained = [outcome.result for outcome in outcomes if outcome.result is not None]
    if trained:
        click.echo(time_split(trained))
    runs = load_runs(study.tracking_uri, study.experiment)
    summary, (csv_path, md_path) = write_study_table(study, runs, estimate)
    figures = [path for _, paths, _ in draw_figures(summary, study.plan.roadmap, results_folder(study))
               for path in paths]
    tracker.log_study_artifacts(study_run_id, [csv_path, md_path, *figures])
    if study.plan.ablation == Ablation.CUMULATIVE:
        _annotate_deltas(study, tracker, summary, runs)
    _link_step_runs(study, tracker, study_run_id, runs)
    power_line = closing_power_line(estimate, study.plan, summary)  # how many Δs it could resolve
    click.echo(terminal_summary(summary, study.plan.roadmap.paper_table, power_line, study.plan.seeds))
    click.echo(_fill(f"full table: {md_path} (and {csv_path.name} beside it)"))
    if figures:
        formats = ", ".join(dict.fromkeys(path.suffix for path in figures))
        click.echo(_fill(f"figures in {results_folder(study)}/ ({formats}): "
                         f"{', '.join(dict.fromkeys(path.stem for path in figures))}"))
    url = tracker.runs_view_url()
    started = url.startswith(tracker.tracking_uri)  # a tracking server: its UI is up
    click.echo("in MLflow" + ("" if started else
                              f" (start the UI with: mlflow ui --backend-store-uri {tracker.tracking_uri})") + ":")
    click.echo(f"  the step runs, top-1 and Δ as columns: {url}")
    click.echo(f"  the study's parent run (plan, table and figures): {tracker.run_url(study_run_id)}")
    failed = [outcome for outcome in outcomes if outcome.status in (Status.DIVERGED, Status.FAILED)]
    return 1 if failed else 0


def _fill(line: str) -> str:
    """A line of the study's end within the terminal summary's width (paths are never broken)."""
    from ..report.tables import TERMINAL_WIDTH

    return textwrap.fill(line, TERMINAL_WIDTH, subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False)


def write_study_table(study: Study, runs=None, estimate=None):
    """The summary of this study's plan, written to its results folder: (summary, (csv path, md path)); with the
    plan's estimate (roadmap.study.estimate), roadmap.md says how many Δs the study could resolve."""
    from ..report.report_summary import report_summary
    from ..report.tables import write_results

    summary = report_summary(study.tracking_uri, study.experiment, study.plan, runs=runs)
    return summary, write_results(summary, results_folder(study), study.plan.roadmap.paper_table,
                                  closing_power_line(estimate, study.plan, summary))


def _annotate_deltas(study: Study, tracker, summary, runs) -> None:
    """Each variant's Δ to its baseline (points, 95 % interval, p) on its finished runs of this plan's seeds."""
    from ..report.results import plan_runs

    mine = plan_runs(runs, study.plan)
    for row in summary.to_dict("records"):
        chosen = mine[(mine["config_hash"] == row["config_hash"]) & (mine["status"] == Status.FINISHED)]
        metrics = {Metric.DELTA_TOP1: _finite(row["delta_top1"], 6),
                   Metric.DELTA_CI_LOW: _finite(row["delta_ci_low"], 6),
                   Metric.DELTA_CI_HIGH: _finite(row["delta_ci_high"], 6), Metric.DELTA_P: _finite(row["delta_p"])}
        for run_id in chosen["run_id"]:
            tracker.annotate(run_id, metrics, {Tag.DELTA_TEST: row["delta_test"] or "none"})


def _link_step_runs(study: Study, tracker, study_run_id: str, runs) -> None:
    """The parent run's description, with a link to each variant's runs of this plan (model-training view)."""
    from ..report.results import plan_runs
    from ..tracking.ui_links import run_path, runs_view_path
    from .driver import parent_description

    mine = plan_runs(runs, study.plan)
    lines = [parent_description(study), "",
             f"[Step runs with top-1 and Δ as columns]({runs_view_path(tracker.experiment_id)}); this study's runs:"]
    for variant in study.plan.variants:
        chosen = mine[mine["config_hash"] == variant.config_hash].sort_values("seed")
        links = [f"[seed {int(seed)}]({run_path(tracker.experiment_id, run_id)})"
                 for seed, run_id in zip(chosen["seed"], chosen["run_id"])]
        lines.append(f"- `{variant.name}`: {', '.join(links) or variant.note or 'no run'}")
    tracker.annotate(study_run_id, {}, {Tag.DESCRIPTION: "\n".join(lines)})


def _finite(value: float, decimals: int | None = None) -> float | None:
    """`value` (rounded to `decimals`: MLflow's table prints 26.8399999 for 40.84 - 14.00); None when not finite."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, decimals) if decimals is not None else value


def time_split(results: Sequence[TrainResult]) -> str:
    """Where the training time of some runs went: model steps, waiting for data, and everything else."""
    train = sum(result.train_s for result in results)
    wait = sum(result.data_wait_s for result in results)
    wall = sum(result.wall_time_s for result in results)
    return (f"time split over {len(results)} trained run(s): training loops {train:.1f} s, of which waiting for "
            f"data {wait:.1f} s (+{100 * wait / max(train - wait, 1e-9):.1f} % on the model steps' "
            f"{train - wait:.1f} s); evaluation, checkpoints and MLflow logging {wall - train:.1f} s")
