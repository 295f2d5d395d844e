"""An experiment's step runs as one pandas table: a row per (configuration, seed), its latest completed run."""
from __future__ import annotations

import math

import pandas as pd

from ..schema import Metric, RunKind, Status, Tag

# Logged once per step run (final figures, benchmark figures).
FINAL_METRICS = (Metric.TOP1, Metric.TOP5, Metric.TOP1_BEST, Metric.TOP1_BEST_EPOCH, Metric.PARAMS, Metric.GMACS,
                 Metric.TRAIN_IMG_PER_S, Metric.EVAL_IMG_PER_S, Metric.PEAK_MEMORY_ALLOCATED_MIB,
                 Metric.PEAK_PROCESS_RSS_MIB, Metric.WALL_TIME_S,
                 Metric.BENCH_TRAIN_IMG_PER_S, Metric.BENCH_EVAL_IMG_PER_S, Metric.BENCH_PEAK_MEMORY_MIB)
RUN_COLUMNS = ("run_id", "step", "seed", "order", "group", "adopted", "baseline", "status", "roadmap", "dataset",
               "data_kind", "preset", "config_hash", "hash_version", "ablation", "start_time", *map(str, FINAL_METRICS))
# A run's status: its outcome tag once MLflow says FINISHED, otherwise what MLflow says.
MLFLOW_TO_STATUS = {"FAILED": Status.FAILED, "KILLED": Status.FAILED, "RUNNING": Status.RUNNING,
                    "SCHEDULED": Status.RUNNING}
COMPLETED = (Status.FINISHED, Status.DIVERGED)


def load_runs(tracking_uri: str | None, experiment: str) -> pd.DataFrame:
    """One row per (config_hash, seed): its latest completed run, else its latest run. `step` is the name of the
    variant that trained it (a configuration two variants share is one run).

    "Completed" is MLflow status FINISHED (outcome finished or diverged); a run that failed after an
    earlier one with the same key completed (e.g. an interrupted --force rerun) does not hide it.
    Rows are sorted by order, step, seed; start_time is in ms since the epoch.
    """
    from ..tracking import load_step_runs  # here, so that reading a CSV (the plot) does not import MLflow

    rows = [_run_row(run) for run in load_step_runs(tracking_uri, experiment, RunKind.STEP)]
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    runs = latest(runs, ["config_hash", "seed"])
    return runs.sort_values(["order", "step", "seed"], kind="stable").reset_index(drop=True)


def _run_row(run) -> dict:
    tags, metrics = run.tags, run.metrics
    row = {
        "run_id": run.run_id,
        "step": tags.get(Tag.STEP, ""),
        "seed": _integer(tags.get(Tag.SEED)),
        "order": _integer(tags.get(Tag.ORDER)),
        "group": tags.get(Tag.GROUP, ""),
        "adopted": tags[Tag.ADOPTED].lower() == "true" if Tag.ADOPTED in tags else None,
        "baseline": tags.get(Tag.BASELINE, ""),
        "status": MLFLOW_TO_STATUS.get(run.mlflow_status, tags.get(Tag.STATUS, Status.FINISHED)),
        "roadmap": tags.get(Tag.ROADMAP, ""),
        "dataset": tags.get(Tag.DATASET, ""),
        "data_kind": tags.get(Tag.DATA_KIND, ""),
        "preset": tags.get(Tag.PRESET, ""),
        "config_hash": tags.get(Tag.CONFIG_HASH, ""),
        "hash_version": tags.get(Tag.HASH_VERSION, ""),
        "ablation": tags.get(Tag.ABLATION, ""),
        "start_time": run.start_time,
    }
    row.update({str(key): float(metrics.get(key, math.nan)) for key in FINAL_METRICS})
    return row


def _integer(text: str | None) -> float | int:
    try:
        return int(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def latest(runs: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Per key, the latest completed run (finished or diverged), else the latest run of any status."""
    # Without start times (a hand-made table), later rows count as newer.
    timed = "start_time" in runs and runs["start_time"].notna().all()
    newness = runs["start_time"] if timed else pd.Series(range(len(runs)), index=runs.index)
    ranked = runs.assign(_completed=runs["status"].isin(COMPLETED), _newness=newness)
    ranked = ranked.sort_values(["_completed", "_newness"], ascending=False, kind="stable")
    return ranked.drop_duplicates(key, keep="first").drop(columns=["_completed", "_newness"])
