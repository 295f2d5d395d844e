"""A study's table: one row per step in roadmap order, mean ± std over seeds, Δ with its interval, the paper."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import SpecError
from ..schema import BENCH_METRICS, RunKind, Status
from ..spec import choice
from .runs_table import latest, load_runs
from .significance import REPORTS, PredictionsOf, compare, mlflow_predictions, top1_interval
from .stats import TrendAgreement, trend_agreement

if TYPE_CHECKING:
    from ..steps import Roadmap

# Architecture and cost figures, averaged over every selected run that logged them (diverged runs measure
# them as well as finished ones); accuracy is averaged over finished runs only.
COST_COLUMNS = ("params", "gmacs", "train_img_per_s", "eval_img_per_s", "peak_memory_mb", *map(str, BENCH_METRICS))
# Δ of a step against another, in points, with its 95 % interval, p-value and test ("welch" or "mcnemar").
DELTA_FIELDS = ("top1", "ci_low", "ci_high", "p", "test")
DELTA_COLUMNS = tuple(f"delta_{field}" for field in DELTA_FIELDS)
# The same against the roadmap's first modern-recipe step (the recipe's own gain removed).
BASE_DELTA_COLUMNS = tuple(f"base_delta_{field}" for field in DELTA_FIELDS)
SUMMARY_COLUMNS = ("roadmap", "order", "step", "group", "adopted", "parent", "n_seeds", "seeds", "status", "report",
                   "top1_mean", "top1_std", "top1_ci_low", "top1_ci_high", "top5_mean", "top5_std", "top1_last_mean",
                   "top1_best_mean",
                   *DELTA_COLUMNS, "base_step", *BASE_DELTA_COLUMNS, *COST_COLUMNS,
                   "paper_top1", "paper_top1_std", "paper_gflops", "paper_delta_top1", "dataset", "data_kind", "preset")
TEXT_COLUMNS = ("roadmap", "step", "group", "parent", "seeds", "status", "report", "delta_test", "base_step",
                "base_delta_test", "dataset", "data_kind", "preset")


class ResultsError(SpecError):
    """A results table that cannot be read; the message names the file and what is wrong."""


def summarize(runs: pd.DataFrame, roadmap: Roadmap, *, report: str = "last",
              predictions_of: PredictionsOf | None = None) -> pd.DataFrame:
    """One row per step of `roadmap`, in roadmap order, steps without runs included (status "missing").

    Per (step, seed) the run chosen is the latest completed one, else the latest one (so a step re-run under a
    new configuration counts its newest result). Runs tagged with another roadmap are ignored. n_seeds, seeds
    and the top-1/top-5 statistics use finished runs only; std is the sample std (NaN for one seed). The
    reported top-1 (top1_mean, top1_std, the Δs) is the last epoch's or, with report="best", the best epoch's.
    Δs are against the step's parent (the previous adopted step, or an explored branch's base) and against the
    roadmap's first modern-recipe step; `predictions_of` gives the images for one-seed comparisons.
    """
    value = "top1" if choice("report", report, REPORTS) == "last" else "top1_best"
    mine = runs[runs["roadmap"].isin([roadmap.name, ""]) | runs["roadmap"].isna()]
    mine = latest(mine, ["step", "seed"])
    by_step = {step.name: mine[mine["step"] == step.name] for step in roadmap.steps}
    base = _first_modern_step(roadmap)
    rows = []
    for step in roadmap.steps:
        chosen = by_step[step.name]
        finished = chosen[chosen["status"] == Status.FINISHED]
        seeds = sorted(int(seed) for seed in finished["seed"].dropna().unique())
        row: dict[str, Any] = {
            "roadmap": roadmap.name, "order": step.order, "step": step.name, "group": step.group,
            "adopted": step.adopted, "parent": step.parent or "", "n_seeds": len(seeds),
            "seeds": ",".join(map(str, seeds)), "status": _step_status(len(finished), len(chosen)), "report": report,
            "top1_mean": _mean(finished[value]), "top1_std": _std(finished[value]),
            **dict(zip(("top1_ci_low", "top1_ci_high"), top1_interval(chosen, value, predictions_of))),
            "top5_mean": _mean(finished["top5"]), "top5_std": _std(finished["top5"]),
            "top1_last_mean": _mean(finished["top1"]), "top1_best_mean": _mean(finished["top1_best"]),
        }
        parent_runs = by_step.get(step.parent or "")
        delta = compare(chosen, parent_runs, value, predictions_of) if parent_runs is not None else None
        row.update(_delta_cells("delta_", delta))
        comparable = base is not None and step.order > base.order
        base_delta = compare(chosen, by_step[base.name], value, predictions_of) if comparable else None
        row["base_step"] = base.name if comparable else ""
        row.update(_delta_cells("base_delta_", base_delta))
        row.update({column: _mean(chosen[column]) for column in COST_COLUMNS})
        row.update({
            "paper_top1": float(step.paper.get("top1", math.nan)),
            "paper_top1_std": float(step.paper.get("top1_std", math.nan)),
            "paper_gflops": float(step.paper.get("gflops", math.nan)),
            "paper_delta_top1": _paper_delta(roadmap, step),
            "dataset": joined(chosen["dataset"]), "data_kind": joined(chosen["data_kind"]),
            "preset": joined(chosen["preset"]),
        })
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def study_summary(tracking_uri: str | None, experiment: str, roadmap: Roadmap, *, report: str = "last",
                  predictions: bool = True, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary of an experiment's runs of `roadmap` (the Roadmap object the study ran, so that a roadmap
    from --steps-dir is summarized against its own steps), with --benchmark figures where a step was not
    trained; one-seed Δ intervals read the runs' stored predictions unless `predictions` is False. `runs`:
    the experiment's load_runs table, when the caller has it already."""
    predictions_of = mlflow_predictions(tracking_uri, report) if predictions else None
    runs = load_runs(tracking_uri, experiment) if runs is None else runs
    summary = summarize(runs, roadmap, report=report, predictions_of=predictions_of)
    return with_benchmarks(summary, load_benchmarks(tracking_uri, experiment, roadmap.name))


def agreement(summary: pd.DataFrame) -> TrendAgreement:
    """How this study's step accuracies and Δs follow the paper's (Spearman rank correlation, Δ signs)."""
    steps = list(summary["step"])
    return trend_agreement(dict(zip(steps, summary["top1_mean"])), dict(zip(steps, summary["paper_top1"])),
                           dict(zip(steps, summary["delta_top1"])), dict(zip(steps, summary["paper_delta_top1"])))


def _first_modern_step(roadmap: Roadmap):
    return next((step for step in roadmap.steps if step.recipe.name == "modern"), None)


def _paper_delta(roadmap: Roadmap, step) -> float:
    if not step.parent:
        return math.nan
    parent = roadmap.step(step.parent)
    return float(step.paper.get("top1", math.nan)) - float(parent.paper.get("top1", math.nan))


def _delta_cells(prefix: str, delta) -> dict[str, Any]:
    if delta is None:
        return {f"{prefix}{field}": (math.nan if field != "test" else "") for field in DELTA_FIELDS}
    return {f"{prefix}top1": delta.delta, f"{prefix}ci_low": delta.ci_low, f"{prefix}ci_high": delta.ci_high,
            f"{prefix}p": delta.p_value, f"{prefix}test": delta.test}


def _step_status(n_finished: int, n_ran: int) -> str:
    if n_ran == 0:
        return Status.MISSING
    if n_finished == n_ran:
        return Status.FINISHED
    return Status.PARTIAL if n_finished else Status.FAILED


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _std(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def joined(values: pd.Series) -> str:
    """The distinct non-empty values, sorted, comma-separated."""
    return ",".join(sorted({str(v) for v in values.dropna() if str(v)}))


def read_summary_csv(path) -> pd.DataFrame:
    """A roadmap.csv written by write_results, its columns checked."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file {path} does not exist; run_ablation.py writes it")
    try:
        summary = pd.read_csv(path, dtype={column: str for column in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultsError(f"results file {path} is not a readable CSV ({str(error).splitlines()[0]})") from None
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise ResultsError(f"results file {path} lacks the columns: {', '.join(missing)}")
    for column in TEXT_COLUMNS:
        summary[column] = summary[column].fillna("")
    summary["adopted"] = summary["adopted"].astype(str).str.lower() == "true"
    return summary[list(SUMMARY_COLUMNS)]


def load_benchmarks(tracking_uri: str | None, experiment: str, roadmap_name: str) -> pd.DataFrame:
    """The latest --benchmark figures of each step of one roadmap (columns: step, params, gmacs, bench_*)."""
    from ..tracking import load_step_runs

    columns = [*map(str, BENCH_METRICS), "params", "gmacs"]
    rows = [{"step": run.tags.get("step", ""), **{key: run.metrics.get(key, math.nan) for key in columns}}
            for run in load_step_runs(tracking_uri, experiment, RunKind.BENCHMARK)
            if run.tags.get("roadmap", roadmap_name) == roadmap_name]  # newest first
    return pd.DataFrame(rows, columns=["step", *columns]).drop_duplicates("step")


def with_benchmarks(summary: pd.DataFrame, benchmarks: pd.DataFrame) -> pd.DataFrame:
    """Fill the summary's empty cost cells with --benchmark figures (steps benchmarked but not trained)."""
    summary = summary.copy()
    for bench in benchmarks.to_dict("records"):
        row = summary["step"] == bench["step"]
        for column in (*map(str, BENCH_METRICS), "params", "gmacs"):
            if row.any() and pd.isna(summary.loc[row, column]).all():
                summary.loc[row, column] = bench[column]
    return summary
