"""Whether a step's Δ is real: Welch over seeds, or a paired bootstrap and McNemar over one seed's images."""
from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..predictions import Predictions, PredictionsError, read_predictions
from ..schema import Artifact
from .stats import NO_DELTA, Delta, accuracy_interval, mean_interval, predictions_delta, welch_delta

# A run id -> that run's validation predictions (None when it has none).
PredictionsOf = Callable[[str], Predictions | None]
REPORTS = ("last", "best")
# What the table says each test measures.
TEST_MEANINGS = {
    "welch": "Welch's t-test and interval over the seeds' top-1 (seed-to-seed noise)",
    "mcnemar": "one seed each: paired bootstrap interval and McNemar's exact test over the validation images "
               "(evaluation noise only, not seed-to-seed noise)",
}


def predictions_artifact(report: str) -> str:
    """The predictions that go with the reported top-1: the last epoch's, or the best epoch's."""
    return Artifact.BEST_PREDICTIONS if report == "best" else Artifact.PREDICTIONS


def mlflow_predictions(tracking_uri: str | None, report: str) -> PredictionsOf:
    """Predictions read from each run's MLflow artifacts (downloaded once into a temporary folder)."""
    from ..tracking import download_artifact

    folder = Path(tempfile.mkdtemp(prefix="roadmap-predictions-"))
    loaded: dict[str, Predictions | None] = {}

    def predictions_of(run_id: str) -> Predictions | None:
        if run_id not in loaded:
            path = download_artifact(tracking_uri, run_id, predictions_artifact(report), folder / run_id)
            try:
                loaded[run_id] = read_predictions(path) if path else None
            except PredictionsError:
                loaded[run_id] = None
        return loaded[run_id]

    return predictions_of


def compare(step_runs: pd.DataFrame, parent_runs: pd.DataFrame, value: str,
            predictions_of: PredictionsOf | None) -> Delta:
    """Δ of `value` (% top-1) between the finished runs of a variant and of its baseline, its 95 % interval and
    p-value, all three from the same data (the `basis` says which):

    - at least 2 seeds on both sides: Δ = difference of the means over every seed, Welch's interval and test;
    - fewer: the lowest seed both sides have: Δ = that pair's difference, the paired bootstrap interval and
      McNemar's test over its validation images ("mcnemar"). The means of unequal seed sets are not used, so
      Δ always lies in its own interval;
    - no common seed, or no predictions: the difference of the means, with no interval, p or test.
    """
    step, parent = _finished(step_runs, value), _finished(parent_runs, value)
    if step.empty or parent.empty:
        return NO_DELTA
    difference = float(step[value].mean() - parent[value].mean())
    means = f"means over seeds {_seeds(step)} vs {_seeds(parent)}, no interval"
    if len(step) >= 2 and len(parent) >= 2:
        welch = welch_delta(step[value].tolist(), parent[value].tolist())
        return dataclasses.replace(welch, basis=f"seeds {_seeds(step)} vs {_seeds(parent)}")
    common = sorted(set(step["seed"]) & set(parent["seed"]))
    if not common or predictions_of is None:
        return Delta(difference, math.nan, math.nan, math.nan, "", means)
    seed = common[0]
    ours = predictions_of(str(step.loc[step["seed"] == seed, "run_id"].iloc[0]))
    theirs = predictions_of(str(parent.loc[parent["seed"] == seed, "run_id"].iloc[0]))
    if ours is None or theirs is None:
        return Delta(difference, math.nan, math.nan, math.nan, "", means)
    try:
        paired = predictions_delta(ours, theirs)
    except PredictionsError:  # not the same validation set
        return Delta(difference, math.nan, math.nan, math.nan, "", means)
    return dataclasses.replace(paired, basis=f"seed {int(seed)} pair, {len(ours.correct())} images")


def _seeds(runs: pd.DataFrame) -> str:
    return ",".join(str(int(seed)) for seed in runs["seed"])


def top1_interval(runs: pd.DataFrame, value: str, predictions_of: PredictionsOf | None) -> tuple[float, float]:
    """95 % interval of a step's mean top-1 (%): over its seeds (>= 2), else over its one run's images."""
    finished = _finished(runs, value)
    if len(finished) >= 2:
        return mean_interval(finished[value].tolist())
    if len(finished) == 1 and predictions_of is not None:
        predictions = predictions_of(str(finished["run_id"].iloc[0]))
        if predictions is not None:
            return accuracy_interval(predictions.correct())
    return math.nan, math.nan


def _finished(runs: pd.DataFrame, value: str) -> pd.DataFrame:
    finished = runs[(runs["status"] == "finished") & runs[value].notna()]
    return finished.sort_values("seed", kind="stable")
