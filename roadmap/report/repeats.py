"""Throughput as it was measured: every repeat of a variant's img/s, their spread, and the repeats far from the rest.

A training run measures its training img/s once per epoch and its inference img/s once (its last evaluation);
its seeds repeat both; `--benchmark` times several repeats and records their spread. A figure that drew one
mean per variant would hide a measurement disturbed by another process on the device (76 img/s among repeats
of 4,000): here each variant gets the median of its repeats, their range, and a flag when a repeat lies more than
FAR_FACTOR from the median of the others.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..schema import Metric, RunKind, Tag
from ..variants import StudyPlan
from .runs_table import latest

# A repeat this many times slower or faster than the median of the variant's other repeats is flagged.
FAR_FACTOR = 1.5
# A --benchmark whose repeats spread wider than this ((max - min) / median, %) is flagged.
FAR_SPREAD_PCT = 100 * (FAR_FACTOR - 1)
# Per kind (train, eval): median, lowest and highest repeat (img/s), how many repeats, how many flagged; then the
# benchmark's recorded spread (%) per kind and, per variant, the device, batch and precision they were measured at.
REPEAT_KINDS = ("train", "eval")
TEXT_COLUMNS = ("train_setting", "eval_setting", "bench_setting")
REPEAT_COLUMNS = (
    *(f"{kind}_img_per_s_{field}" for kind in REPEAT_KINDS for field in ("median", "low", "high", "repeats", "far")),
    "bench_train_spread_pct", "bench_eval_spread_pct", *TEXT_COLUMNS,
)


@dataclass(frozen=True)
class Repeats:
    """The repeated measurements of one quantity of one variant (img/s)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def far(self) -> tuple[float, ...]:
        """The repeats more than FAR_FACTOR from the median of the others (none with fewer than 2 repeats)."""
        found = []
        for index, value in enumerate(self.values):
            others = self.values[:index] + self.values[index + 1:]
            if others and value > 0 and not 1 / FAR_FACTOR <= value / statistics.median(others) <= FAR_FACTOR:
                found.append(value)
        return tuple(found)

    def cells(self, kind: str) -> dict[str, float]:
        values = self.values
        return {f"{kind}_img_per_s_median": self.median, f"{kind}_img_per_s_low": min(values, default=math.nan),
                f"{kind}_img_per_s_high": max(values, default=math.nan), f"{kind}_img_per_s_repeats": len(values),
                f"{kind}_img_per_s_far": len(self.far)}


def training_repeats(run, epochs: int, history: Sequence[tuple[int, float]]) -> tuple[float, ...]:
    """A training run's img/s of each epoch (MLflow steps 1..epochs); its one overall figure when it logged none."""
    per_epoch = tuple(value for step, value in history if 1 <= step <= epochs and value > 0)
    overall = run.metrics.get(Metric.TRAIN_IMG_PER_S, math.nan)
    return per_epoch or ((overall,) if math.isfinite(overall) else ())


def measurement_setting(run, kind: str) -> str:
    """Where and how a training run measured its img/s: "cpu x1 · batch 64 (64 per forward pass) · fp32" for
    training; for inference the evaluation batch of one process (the micro-batch, twice it on a GPU: unit.py)."""
    device = run.tags.get(Tag.DEVICE, "") or "unknown device"
    micro = run.params.get("recipe.bn_batch", "?")
    if kind == "train":
        batch = f"batch {run.params.get('recipe.batch_size', '?')} ({micro} per forward pass)"
    else:
        on_cpu = device.startswith("cpu")
        batch = f"batch {micro if on_cpu or not micro.isdigit() else 2 * int(micro)} per process"
    return f"{device} · {batch} · {run.params.get('precision', 'fp32')}"


def load_repeats(tracking_uri: str | None, experiment: str, plan: StudyPlan) -> pd.DataFrame:
    """REPEAT_COLUMNS per configuration hash of `plan`, from its finished runs of the plan's seeds (their epochs)
    and its latest --benchmark run."""
    from ..tracking import load_metric_history, load_step_runs

    hashes = plan.hashes()
    runs = [run for run in load_step_runs(tracking_uri, experiment, RunKind.STEP)
            if run.tags.get(Tag.CONFIG_HASH) in hashes and run.mlflow_status == "FINISHED"
            and run.tags.get(Tag.SEED, "").isdigit() and int(run.tags[Tag.SEED]) in plan.seeds]
    table = pd.DataFrame([{"index": index, "config_hash": run.tags[Tag.CONFIG_HASH], "seed": int(run.tags[Tag.SEED]),
                           "status": "finished", "start_time": run.start_time} for index, run in enumerate(runs)],
                         columns=["index", "config_hash", "seed", "status", "start_time"])
    chosen = [runs[index] for index in latest(table, ["config_hash", "seed"])["index"]]
    rows: dict[str, dict[str, object]] = {}
    for config_hash in sorted(hashes):
        mine = [run for run in chosen if run.tags[Tag.CONFIG_HASH] == config_hash]
        train, evaluation = [], []
        for run in mine:
            epochs = int(float(run.params.get("recipe.epochs", "0") or 0))
            history = load_metric_history(tracking_uri, run.run_id, Metric.TRAIN_IMG_PER_S)
            train.extend(training_repeats(run, epochs, history))
            rate = run.metrics.get(Metric.EVAL_IMG_PER_S, math.nan)
            if math.isfinite(rate) and rate > 0:
                evaluation.append(rate)
        rows[config_hash] = {**Repeats(tuple(train)).cells("train"), **Repeats(tuple(evaluation)).cells("eval"),
                             **{f"{kind}_setting": "; ".join(sorted({measurement_setting(run, kind) for run in mine}))
                                for kind in REPEAT_KINDS}}
    for bench in load_step_runs(tracking_uri, experiment, RunKind.BENCHMARK):  # newest first
        row = rows.get(bench.tags.get(Tag.CONFIG_HASH, ""))
        if row is not None and "bench_setting" not in row:
            row.update(bench_train_spread_pct=bench.metrics.get(Metric.BENCH_TRAIN_SPREAD_PCT, math.nan),
                       bench_eval_spread_pct=bench.metrics.get(Metric.BENCH_EVAL_SPREAD_PCT, math.nan),
                       bench_setting=bench.tags.get(Tag.BENCHMARK, ""))
    frame = pd.DataFrame([{"config_hash": key, **value} for key, value in rows.items()],
                         columns=["config_hash", *REPEAT_COLUMNS])
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].fillna("")
    return frame


def with_repeats(summary: pd.DataFrame, repeats: pd.DataFrame) -> pd.DataFrame:
    """The summary with REPEAT_COLUMNS joined on the configuration hash (empty for variants without runs)."""
    base = summary.drop(columns=[column for column in REPEAT_COLUMNS if column in summary.columns])
    joined = base.merge(repeats, on="config_hash", how="left", validate="many_to_one")
    for column in TEXT_COLUMNS:
        joined[column] = joined[column].fillna("")
    joined.index = summary.index
    return joined
