"""A study's table: one row per variant of its plan, mean ± std over seeds, Δ with its interval, the paper.

Only runs whose configuration hash is in the plan, for the seeds the plan asked for, are read: runs of other
configurations in the same experiment are never mixed in.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..errors import SpecError
from ..schema import BENCH_METRICS, RunKind, Status
from ..spec import choice
from ..variants import Ablation, StudyPlan, Variant
from .runs_table import latest, load_runs
from .significance import REPORTS, PredictionsOf, compare, mlflow_predictions, top1_interval
from .stats import TrendAgreement, trend_agreement

# Architecture and cost figures, averaged over every selected run that logged them (diverged runs measure
# them as well as finished ones); accuracy is averaged over finished runs only.
# peak_memory_mib: each run's own peak, MiB: CUDA's allocated memory, else the training process's resident set.
COST_COLUMNS = ("params", "gmacs", "train_img_per_s", "eval_img_per_s", "peak_memory_mib", *map(str, BENCH_METRICS))
# Δ of a variant against another, in points, with its 95 % interval, p-value, test ("welch" or "mcnemar") and
# the data all four come from ("seeds 0,1,2 vs 0,1,2", "seed 0 pair, 2500 images").
DELTA_FIELDS = ("top1", "ci_low", "ci_high", "p", "test", "basis")
DELTA_COLUMNS = tuple(f"delta_{field}" for field in DELTA_FIELDS)
# The same against the roadmap's first modern-recipe step (the recipe's own gain removed; cumulative only).
BASE_DELTA_COLUMNS = tuple(f"base_delta_{field}" for field in DELTA_FIELDS)
SUMMARY_COLUMNS = ("roadmap", "ablation", "order", "variant", "label", "step", "group", "adopted", "baseline",
                   "config_hash", "n_seeds", "seeds", "status", "note", "report",
                   "top1_mean", "top1_std", "top1_ci_low", "top1_ci_high", "top5_mean", "top5_std", "top1_last_mean",
                   "top1_best_mean",
                   *DELTA_COLUMNS, "base_variant", *BASE_DELTA_COLUMNS, *COST_COLUMNS,
                   "paper_step", "paper_top1", "paper_top1_std", "paper_gflops", "paper_delta_top1", "paper_note",
                   "dataset",
                   "data_kind", "preset")
TEXT_COLUMNS = ("roadmap", "ablation", "variant", "label", "step", "group", "baseline", "config_hash", "seeds",
                "status", "note", "report", "delta_test", "delta_basis", "base_variant", "base_delta_test",
                "base_delta_basis", "paper_step", "paper_note", "dataset", "data_kind", "preset")


class ResultsError(SpecError):
    """A results table that cannot be read; the message names the file and what is wrong."""


def plan_runs(runs: pd.DataFrame, plan: StudyPlan) -> pd.DataFrame:
    """The runs that belong to the plan: a configuration hash in it and a seed it asked for; per (hash, seed)
    the latest completed run, else the latest one. Each gets its peak_memory_mib (COST_COLUMNS)."""
    mine = runs[runs["config_hash"].isin(plan.hashes()) & runs["seed"].isin(plan.seeds)]
    mine = latest(mine, ["config_hash", "seed"])
    return mine.assign(peak_memory_mib=mine["peak_memory_allocated_mib"].fillna(mine["peak_process_rss_mib"]))


def summarize(runs: pd.DataFrame, plan: StudyPlan, *, predictions_of: PredictionsOf | None = None) -> pd.DataFrame:
    """One row per variant of `plan`, in plan order; variants without runs included (status "missing").

    n_seeds, seeds and the top-1/top-5 statistics use finished runs only; std is the sample std (NaN for one
    seed). The reported top-1 (top1_mean, top1_std, the Δs) is the last epoch's or, with plan.report "best",
    the best epoch's. Each Δ is against the variant's baseline (its parent step; in leave-one-out the final
    model) and, in a cumulative study, against the roadmap's first modern-recipe step; `predictions_of` gives
    the images for one-seed comparisons. Identical variants repeat their twin's numbers without a Δ;
    unbuildable ones have none.
    """
    value = "top1" if choice("report", plan.report, REPORTS) == "last" else "top1_best"
    mine = plan_runs(runs, plan)
    by_hash = {variant.config_hash: mine[mine["config_hash"] == variant.config_hash] for variant in plan.variants}
    empty = mine.iloc[0:0]
    base = _first_modern(plan)
    rows = []
    for variant in plan.variants:
        chosen = by_hash.get(variant.config_hash, empty) if variant.config_hash else empty
        finished = chosen[chosen["status"] == Status.FINISHED]
        seeds = sorted(int(seed) for seed in finished["seed"].dropna().unique())
        row: dict[str, Any] = {
            "roadmap": plan.roadmap.name, "ablation": plan.ablation, "order": variant.order, "variant": variant.name,
            "label": variant.label, "step": variant.step, "group": variant.group, "adopted": variant.adopted,
            "baseline": variant.baseline or "", "config_hash": variant.config_hash, "n_seeds": len(seeds),
            "seeds": ",".join(map(str, seeds)), "status": _status(variant, len(finished), len(chosen)),
            "note": variant.note, "report": plan.report,
            "top1_mean": _mean(finished[value]), "top1_std": _std(finished[value]),
            **dict(zip(("top1_ci_low", "top1_ci_high"), top1_interval(chosen, value, predictions_of))),
            "top5_mean": _mean(finished["top5"]), "top5_std": _std(finished["top5"]),
            "top1_last_mean": _mean(finished["top1"]), "top1_best_mean": _mean(finished["top1_best"]),
        }
        compared = variant.baseline is not None and variant.identical_to is None and not variant.unbuildable
        baseline = plan.variant(variant.baseline) if compared else None
        delta = compare(chosen, by_hash.get(baseline.config_hash, empty), value, predictions_of) if baseline else None
        row.update(_delta_cells("delta_", delta))
        comparable = base is not None and variant.order > base.order and compared
        base_delta = compare(chosen, by_hash[base.config_hash], value, predictions_of) if comparable else None
        row["base_variant"] = base.name if comparable else ""
        row.update(_delta_cells("base_delta_", base_delta))
        row.update({column: _mean(chosen[column]) for column in COST_COLUMNS})
        if not len(chosen) and variant.trains:  # nothing ran yet: the plan's own size at the study's scale
            row.update(params=float(variant.params), gmacs=variant.gmacs)
        paper = variant.paper
        row.update({
            "paper_step": paper.step, "paper_top1": paper.top1, "paper_top1_std": paper.top1_std,
            "paper_gflops": paper.gflops,
            "paper_delta_top1": paper.top1 - plan.variant(variant.baseline).paper.top1 if baseline else math.nan,
            "paper_note": paper.note,
            "dataset": joined(chosen["dataset"]), "data_kind": joined(chosen["data_kind"]),
            "preset": joined(chosen["preset"]) or plan.preset,
        })
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def study_summary(tracking_uri: str | None, experiment: str, plan: StudyPlan, *, predictions: bool = True,
                  runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary of an experiment's runs of `plan`, with --benchmark figures where a variant was not trained;
    one-seed Δ intervals read the runs' stored predictions unless `predictions` is False. `runs`: the
    experiment's load_runs table, when the caller has it already."""
    predictions_of = mlflow_predictions(tracking_uri, plan.report) if predictions else None
    runs = load_runs(tracking_uri, experiment) if runs is None else runs
    summary = summarize(runs, plan, predictions_of=predictions_of)
    return with_benchmarks(summary, load_benchmarks(tracking_uri, experiment, plan.hashes()))


def agreement(summary: pd.DataFrame) -> TrendAgreement:
    """How this study's accuracies and Δs follow the paper's (Spearman rank correlation, Δ signs)."""
    variants = list(summary["variant"])
    return trend_agreement(dict(zip(variants, summary["top1_mean"])), dict(zip(variants, summary["paper_top1"])),
                           dict(zip(variants, summary["delta_top1"])),
                           dict(zip(variants, summary["paper_delta_top1"])))


def _first_modern(plan: StudyPlan) -> Variant | None:
    if plan.ablation != Ablation.CUMULATIVE:
        return None
    return next((variant for variant in plan.variants if variant.recipe.name == "modern" and variant.trains), None)


def _delta_cells(prefix: str, delta) -> dict[str, Any]:
    if delta is None:
        return {f"{prefix}{field}": ("" if field in ("test", "basis") else math.nan) for field in DELTA_FIELDS}
    return {f"{prefix}top1": delta.delta, f"{prefix}ci_low": delta.ci_low, f"{prefix}ci_high": delta.ci_high,
            f"{prefix}p": delta.p_value, f"{prefix}test": delta.test, f"{prefix}basis": delta.basis}


def _status(variant: Variant, n_finished: int, n_ran: int) -> str:
    if variant.unbuildable:
        return Status.UNBUILDABLE
    if variant.identical_to is not None:
        return Status.IDENTICAL
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


def load_benchmarks(tracking_uri: str | None, experiment: str, hashes: set[str]) -> pd.DataFrame:
    """The latest --benchmark figures of each configuration (columns: config_hash, params, gmacs, bench_*)."""
    from ..tracking import load_step_runs

    columns = [*map(str, BENCH_METRICS), "params", "gmacs"]
    rows = [{"config_hash": run.tags.get("config_hash", ""), **{key: run.metrics.get(key, math.nan) for key in columns}}
            for run in load_step_runs(tracking_uri, experiment, RunKind.BENCHMARK)
            if run.tags.get("config_hash", "") in hashes]  # newest first
    return pd.DataFrame(rows, columns=["config_hash", *columns]).drop_duplicates("config_hash")


def with_benchmarks(summary: pd.DataFrame, benchmarks: pd.DataFrame) -> pd.DataFrame:
    """Fill the summary's empty cost cells with --benchmark figures (variants benchmarked but not trained)."""
    summary = summary.copy()
    for bench in benchmarks.to_dict("records"):
        row = summary["config_hash"] == bench["config_hash"]
        for column in (*map(str, BENCH_METRICS), "params", "gmacs"):
            if row.any() and pd.isna(summary.loc[row, column]).all():
                summary.loc[row, column] = bench[column]
    return summary
