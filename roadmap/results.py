"""Step runs as pandas tables: one row per step in roadmap order, mean ± std over seeds, Δ to the parent, paper."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .spec import SpecError

if TYPE_CHECKING:
    from .steps import Roadmap

# Logged once per step run by the CLI (StepRun.log_final / log_metrics).
FINAL_METRICS = ("top1", "top5", "params", "gmacs", "train_img_per_s", "eval_img_per_s", "peak_memory_mb",
                 "wall_time_s", "bench_train_img_per_s", "bench_eval_img_per_s", "bench_peak_memory_mb")
RUN_COLUMNS = ("run_id", "step", "seed", "order", "group", "adopted", "parent_step", "status", "roadmap", "dataset",
               "preset", "config_hash", "start_time", *FINAL_METRICS)
# Architecture and cost figures, averaged over every selected run that logged them (diverged runs measure
# them as well as finished ones); accuracy is averaged over finished runs only.
COST_COLUMNS = ("params", "gmacs", "train_img_per_s", "eval_img_per_s", "peak_memory_mb",
                "bench_train_img_per_s", "bench_eval_img_per_s", "bench_peak_memory_mb")
SUMMARY_COLUMNS = ("roadmap", "order", "step", "group", "adopted", "parent", "n_seeds", "seeds", "status",
                   "top1_mean", "top1_std", "top5_mean", "top5_std", "delta_top1", *COST_COLUMNS,
                   "paper_top1", "paper_top1_std", "paper_gflops", "dataset", "preset")
TEXT_COLUMNS = ("roadmap", "step", "group", "parent", "seeds", "status", "dataset", "preset")
# A run's status: its outcome tag once MLflow says FINISHED, otherwise what MLflow says.
MLFLOW_TO_STATUS = {"FAILED": "failed", "KILLED": "failed", "RUNNING": "running", "SCHEDULED": "running"}


class ResultsError(SpecError):
    """A results table that cannot be read; the message names the file and what is wrong."""


def load_runs(tracking_uri: str | None, experiment: str) -> pd.DataFrame:
    """One row per (step, seed, config_hash): its latest completed run, else its latest run.

    "Completed" is MLflow status FINISHED (outcome finished or diverged); a run that failed after an
    earlier one with the same key completed (e.g. an interrupted --force rerun) does not hide it.
    Rows are sorted by order, step, seed; start_time is in ms since the epoch.
    """
    # Imported here so that reading a CSV (the plot) does not pay for importing MLflow.
    from .tracking import load_step_runs

    rows = [_run_row(run) for run in load_step_runs(tracking_uri, experiment)]
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    runs = _latest(runs, ["step", "seed", "config_hash"])
    return runs.sort_values(["order", "step", "seed"], kind="stable").reset_index(drop=True)


def _run_row(run: dict[str, Any]) -> dict[str, Any]:
    tags, metrics = run["tags"], run["metrics"]
    status = MLFLOW_TO_STATUS.get(run["mlflow_status"], tags.get("status", "finished"))
    row = {
        "run_id": run["run_id"],
        "step": tags.get("step", ""),
        "seed": _integer(tags.get("seed")),
        "order": _integer(tags.get("order")),
        "group": tags.get("group", ""),
        "adopted": tags.get("adopted", "").lower() == "true" if "adopted" in tags else None,
        "parent_step": tags.get("parent_step", ""),
        "status": status,
        "roadmap": tags.get("roadmap", ""),
        "dataset": tags.get("dataset", ""),
        "preset": tags.get("preset", ""),
        "config_hash": tags.get("config_hash", ""),
        "start_time": run["start_time"],
    }
    row.update({key: float(metrics.get(key, math.nan)) for key in FINAL_METRICS})
    return row


def _integer(text: str | None) -> float | int:
    try:
        return int(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def _latest(runs: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Per key, the latest completed run (finished or diverged), else the latest run of any status."""
    # Without start times (a hand-made table), later rows count as newer.
    newness = runs["start_time"] if "start_time" in runs else pd.Series(range(len(runs)), index=runs.index)
    ranked = runs.assign(_completed=runs["status"].isin(["finished", "diverged"]), _newness=newness)
    ranked = ranked.sort_values(["_completed", "_newness"], ascending=False, kind="stable")
    return ranked.drop_duplicates(key, keep="first").drop(columns=["_completed", "_newness"])


def summarize(runs: pd.DataFrame, roadmap: Roadmap) -> pd.DataFrame:
    """One row per step of `roadmap`, in roadmap order, steps without runs included (status "missing").

    Per (step, seed) the run chosen is the latest completed one, else the latest one (so a step re-run under a
    new configuration counts its newest result). Runs tagged with another roadmap are ignored. n_seeds, seeds
    and the top-1/top-5 statistics use finished runs only; std is the sample std (NaN for one seed).
    delta_top1 is against the step's parent: the previous adopted step, or an explored branch's base.
    """
    mine = runs[runs["roadmap"].isin([roadmap.name, ""]) | runs["roadmap"].isna()]
    mine = _latest(mine, ["step", "seed"])
    rows = []
    for step in roadmap.steps:
        chosen = mine[mine["step"] == step.name]
        finished = chosen[chosen["status"] == "finished"]
        seeds = sorted(int(seed) for seed in finished["seed"].dropna().unique())
        row: dict[str, Any] = {
            "roadmap": roadmap.name, "order": step.order, "step": step.name, "group": step.group,
            "adopted": step.adopted, "parent": step.parent or "", "n_seeds": len(seeds),
            "seeds": ",".join(map(str, seeds)), "status": _step_status(len(finished), len(chosen)),
            "top1_mean": _mean(finished["top1"]), "top1_std": _std(finished["top1"]),
            "top5_mean": _mean(finished["top5"]), "top5_std": _std(finished["top5"]),
            "delta_top1": math.nan,
        }
        row.update({column: _mean(chosen[column]) for column in COST_COLUMNS})
        row.update({
            "paper_top1": float(step.paper.get("top1", math.nan)),
            "paper_top1_std": float(step.paper.get("top1_std", math.nan)),
            "paper_gflops": float(step.paper.get("gflops", math.nan)),
            "dataset": _joined(chosen["dataset"]), "preset": _joined(chosen["preset"]),
        })
        rows.append(row)
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    top1_by_step = dict(zip(summary["step"], summary["top1_mean"]))
    summary["delta_top1"] = [top1 - top1_by_step.get(parent, math.nan)
                             for parent, top1 in zip(summary["parent"], summary["top1_mean"])]
    return summary


def _step_status(n_finished: int, n_ran: int) -> str:
    if n_ran == 0:
        return "missing"
    if n_finished == n_ran:
        return "finished"
    return "partial" if n_finished else "failed"


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _std(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _joined(values: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in values.dropna() if str(v)}))


def write_results(summary: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """out_dir/roadmap.csv (every number at full precision) and out_dir/roadmap.md (a readable table)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "roadmap.csv", out_dir / "roadmap.md"
    summary.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(summary))
    return csv_path, md_path


def to_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table with a header saying what the numbers are."""
    seeds = sorted({int(s) for text in summary["seeds"] for s in str(text).split(",") if s.strip()})
    roadmap = _joined(summary["roadmap"]) or "?"
    lines = [
        f"# {roadmap}",
        "",
        f"Data set: {_joined(summary['dataset']) or 'none trained yet'} · "
        f"preset: {_joined(summary['preset']) or '–'} · "
        f"seeds: {','.join(map(str, seeds)) or 'none'}. Top-1 is the mean ± sample std over finished seeds; "
        "Δ is against the step's parent (the previous adopted step; for an explored branch, its base). "
        "GMACs and the paper's GFLOPs are both multiply-accumulates of conv and linear layers only; ours are at "
        "this study's resolution and width, the paper's at 224 px and full width. Throughput (img/s) is on "
        "this study's device, batch and precision; peak memory in MiB. "
        "Paper columns: ImageNet-1K, Liu et al. 2022, Table 10.",
        "",
    ]
    bench = summary[["bench_train_img_per_s", "bench_eval_img_per_s", "bench_peak_memory_mb"]].notna().any().any()
    header = ["#", "step", "group", "top-1 (%) mean ± std", "Δ top-1", "paper top-1", "GMACs (ours)",
              "paper GFLOPs", "params (M)", "train img/s", "eval img/s", "peak mem (MiB)"]
    if bench:
        header += ["bench train img/s", "bench eval img/s", "bench peak mem (MiB)"]
    header += ["seeds", "status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in summary.itertuples(index=False):
        cells = [
            str(row.order),
            row.step if row.adopted else f"_{row.step}_ (explored)",
            row.group,
            _pm(row.top1_mean, row.top1_std),
            _number(row.delta_top1, "{:+.2f}"),
            _pm(row.paper_top1, row.paper_top1_std),
            _number(row.gmacs, "{:.4g}"),  # 4.089 at the paper's scale, 0.006312 at the demo's
            _number(row.paper_gflops, "{:.2f}"),
            _number(row.params / 1e6, "{:.2f}"),
            _number(row.train_img_per_s, "{:.0f}"),
            _number(row.eval_img_per_s, "{:.0f}"),
            _number(row.peak_memory_mb, "{:.0f}"),
        ]
        if bench:
            cells += [_number(row.bench_train_img_per_s, "{:.0f}"), _number(row.bench_eval_img_per_s, "{:.0f}"),
                      _number(row.bench_peak_memory_mb, "{:.0f}")]
        cells += [str(row.seeds) or "–", row.status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float, form: str) -> str:
    return "–" if value is None or pd.isna(value) else form.format(value)


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def read_summary_csv(path: Path | str) -> pd.DataFrame:
    """A roadmap.csv written by write_results, its columns checked."""
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


def study_summary(tracking_uri: str | None, experiment: str, roadmap_name: str) -> pd.DataFrame:
    """load_runs + load_roadmap + summarize; an unknown experiment or roadmap raises a SpecError."""
    from .steps import load_roadmap

    roadmap = load_roadmap(roadmap_name)
    summary = summarize(load_runs(tracking_uri, experiment), roadmap)
    return with_benchmarks(summary, load_benchmarks(tracking_uri, experiment, roadmap_name))


BENCH_COLUMNS = ("bench_train_img_per_s", "bench_eval_img_per_s", "bench_peak_memory_mb")


def load_benchmarks(tracking_uri: str | None, experiment: str, roadmap_name: str) -> pd.DataFrame:
    """The latest --benchmark figures of each step of one roadmap (columns: step, params, gmacs, bench_*)."""
    from .tracking import load_step_runs

    rows = [{"step": run["tags"].get("step", ""), **{k: run["metrics"].get(k, math.nan) for k in BENCH_COLUMNS},
             "params": run["metrics"].get("params", math.nan), "gmacs": run["metrics"].get("gmacs", math.nan)}
            for run in load_step_runs(tracking_uri, experiment, kind="benchmark")
            if run["tags"].get("roadmap", roadmap_name) == roadmap_name]  # newest first
    return pd.DataFrame(rows, columns=["step", *BENCH_COLUMNS, "params", "gmacs"]).drop_duplicates("step")


def with_benchmarks(summary: pd.DataFrame, benchmarks: pd.DataFrame) -> pd.DataFrame:
    """Fill the summary's empty cost cells with --benchmark figures (steps benchmarked but not trained)."""
    summary = summary.copy()
    for bench in benchmarks.itertuples(index=False):
        row = summary["step"] == bench.step
        for column in (*BENCH_COLUMNS, "params", "gmacs"):
            if row.any() and pd.isna(summary.loc[row, column]).all():
                summary.loc[row, column] = getattr(bench, column)
    return summary
