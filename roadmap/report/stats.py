"""Statistics of step deltas: Δ top-1 to the parent step with a confidence interval and p, and trend agreement."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..predictions import Predictions, aligned_correct

CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Delta:
    """Δ top-1 of a step to its parent, in points (percentage points of top-1), with interval and p-value."""

    delta: float  # points, step minus parent (NaN when unknown)
    ci_low: float  # points
    ci_high: float  # points
    p_value: float
    test: str  # "welch" (over seeds), "mcnemar" (over images of one seed pair) or "" (nothing computable)
    # The data Δ, its interval and p all come from: "seeds 0,1,2 vs 0,1,2", "seed 0 pair, 2500 images".
    basis: str = ""

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0 (False when it is NaN)."""
        return self.ci_low > 0 or self.ci_high < 0  # NaN compares False


NO_DELTA = Delta(math.nan, math.nan, math.nan, math.nan, "")


# ------------------------------------------------------------------------------------------ over seeds


def welch_delta(step_top1: Sequence[float], parent_top1: Sequence[float], level: float = CONFIDENCE_LEVEL) -> Delta:
    """Δ = mean(step) - mean(parent) of per-seed top-1 (%), Welch's t-interval and two-sided Welch t-test.

    Needs at least 2 finite values on each side (ValueError otherwise). When both sides have zero variance
    the t statistic is undefined: the interval and p are NaN (Δ is still given).
    """
    _check_level(level)
    step, parent = _seed_values(step_top1, "step"), _seed_values(parent_top1, "parent")
    delta = float(step.mean() - parent.mean())
    if np.ptp(step) == 0 and np.ptp(parent) == 0:
        return Delta(delta, math.nan, math.nan, math.nan, "welch")
    with warnings.catch_warnings():
        # scipy flags a constant side as "catastrophic cancellation"; its variance is exactly 0, which Welch allows.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        result = stats.ttest_ind(step, parent, equal_var=False)
        interval = result.confidence_interval(confidence_level=level)
    return Delta(delta, float(interval.low), float(interval.high), float(result.pvalue), "welch")


def _seed_values(values: Sequence[float], side: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) < 2:
        raise ValueError(f"Welch's test needs at least 2 seeds on each side, the {side} has {array.size}")
    if not np.isfinite(array).all():
        raise ValueError(f"the {side}'s top-1 values must be finite, got {array.tolist()}")
    return array


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")


# ------------------------------------------------------------------------------------------ over images


def paired_delta(step_correct: np.ndarray, parent_correct: np.ndarray, *, level: float = CONFIDENCE_LEVEL,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Delta:
    """Δ top-1 over the same validation images (one run each): paired bootstrap interval and McNemar's exact p.

    `step_correct[i]`, `parent_correct[i]`: whether each run's top-1 prediction for image i is right.
    Δ = 100 * (mean(step_correct) - mean(parent_correct)) points, which equals the difference of the runs'
    logged top-1 when the arrays come from those runs. The interval and p measure evaluation noise only
    (which images happen to be in the validation set), not seed-to-seed training noise.
    """
    step, parent = _paired(step_correct, parent_correct)
    delta = 100.0 * (float(step.mean()) - float(parent.mean()))
    low, high = bootstrap_interval(step, parent, level=level, resamples=resamples, seed=seed)
    return Delta(delta, low, high, mcnemar_exact_p(step, parent), "mcnemar")


def predictions_delta(step: Predictions, parent: Predictions, **options) -> Delta:
    """`paired_delta` of two runs' predictions; PredictionsError unless they cover the same images."""
    return paired_delta(*aligned_correct(step, parent), **options)


def mcnemar_exact_p(step_correct: np.ndarray, parent_correct: np.ndarray) -> float:
    """McNemar's exact two-sided p: binomial test of b "step right, parent wrong" among the b + c discordant
    images, under p = 1/2. 1.0 when no image is discordant."""
    step, parent = _paired(step_correct, parent_correct)
    plus, minus = _discordant(step, parent)
    if plus + minus == 0:
        return 1.0
    return float(stats.binomtest(plus, plus + minus, 0.5).pvalue)


def bootstrap_interval(step_correct: np.ndarray, parent_correct: np.ndarray, *, level: float = CONFIDENCE_LEVEL,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Paired nonparametric bootstrap percentile interval of Δ top-1 (points) over the same images.

    The textbook bootstrap draws n images with replacement, each pair (step, parent) kept together, and
    takes Δ = 100 * (k+ - k-) / n, where k+ and k- count the drawn images that are "step right, parent
    wrong" and "step wrong, parent right"; concordant images add 0. Δ depends on the draw only through
    (k+, k-, k0), and n independent uniform draws from images falling into three categories with shares
    (p+, p-, p0) give counts that are exactly Multinomial(n, [p+, p-, p0]). So one multinomial draw per
    resample is the same bootstrap in distribution, in O(resamples) instead of O(resamples * n).
    The interval is numpy's default (linear) quantiles at (1 -/+ level) / 2 of `resamples` Δs, with a
    fixed `seed`, so a report is reproducible.
    """
    _check_level(level)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    step, parent = _paired(step_correct, parent_correct)
    n = len(step)
    plus, minus = _discordant(step, parent)
    shares = np.array([plus, minus, n - plus - minus]) / n
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    deltas = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _paired(step_correct: np.ndarray, parent_correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step, parent = _as_bool(step_correct, "step"), _as_bool(parent_correct, "parent")
    if step.shape != parent.shape or len(step) == 0:
        raise ValueError(f"need two non-empty correctness arrays over the same images, "
                         f"got {step.shape[0]} and {parent.shape[0]} values")
    return step, parent


def _as_bool(values: np.ndarray, side: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"the {side}'s correctness must be 1-D, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"the {side}'s correctness must be booleans (or 0/1)")
    return array.astype(bool, copy=False)


def _discordant(step: np.ndarray, parent: np.ndarray) -> tuple[int, int]:
    """(images the step gets right and the parent wrong, images the step gets wrong and the parent right)."""
    return int(np.count_nonzero(step & ~parent)), int(np.count_nonzero(~step & parent))


# ----------------------------------------------------------------------------------- one step's top-1


def mean_interval(top1: Sequence[float], level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """The t-interval of the mean top-1 (%) over >= 2 seeds (seed-to-seed noise); NaN with fewer or no spread."""
    _check_level(level)
    values = np.asarray([value for value in top1 if _finite(value)], dtype=float)
    if len(values) < 2 or np.ptp(values) == 0:
        return math.nan, math.nan
    interval = stats.t.interval(level, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return float(interval[0]), float(interval[1])


def accuracy_interval(correct: np.ndarray, level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Wilson's interval of one run's top-1 (%) over its validation images (evaluation noise only)."""
    _check_level(level)
    correct = _as_bool(np.asarray(correct), "run")
    interval = stats.binomtest(int(correct.sum()), len(correct)).proportion_ci(confidence_level=level,
                                                                                method="wilson")
    return 100.0 * float(interval.low), 100.0 * float(interval.high)


# ------------------------------------------------------------------------------------ trend agreement


@dataclass(frozen=True)
class TrendAgreement:
    """How a study's top-1 trend along a roadmap agrees with the paper's."""

    spearman_rho: float  # rank correlation of the steps' top-1, study vs paper (NaN below 3 steps or constant)
    spearman_p: float
    n_steps: int  # steps with a finite top-1 in both
    sign_agreement: float  # share (0..1) of the n_deltas Δs with the paper's sign; NaN if n_deltas == 0
    n_deltas: int  # steps with a finite Δ in both and a paper Δ != 0

    def describe(self, paper_table: str) -> str:
        """One line, e.g. "agreement with the paper (Table 10): Spearman rank correlation 0.62 (p = 0.01)
        over 16 steps; 9 of 15 Δs have the paper's sign (60 %)"."""
        return f"agreement with the paper ({paper_table}): {self._rank_text()}; {self._sign_text()}"

    def _rank_text(self) -> str:
        if self.n_steps < 3:
            return f"no Spearman rank correlation ({self.n_steps} steps with both top-1s, needs 3)"
        if math.isnan(self.spearman_rho):
            return f"no Spearman rank correlation (a constant top-1 over {self.n_steps} steps)"
        return (f"Spearman rank correlation {self.spearman_rho:.2f} ({_p_text(self.spearman_p)}) "
                f"over {self.n_steps} steps")

    def _sign_text(self) -> str:
        if self.n_deltas == 0:
            return "no Δ to compare with a nonzero paper Δ"
        agreeing = round(self.sign_agreement * self.n_deltas)
        return f"{agreeing} of {self.n_deltas} Δs have the paper's sign ({100 * self.sign_agreement:.0f} %)"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def trend_agreement(study_top1: Mapping[str, float], paper_top1: Mapping[str, float],
                    study_delta: Mapping[str, float], paper_delta: Mapping[str, float]) -> TrendAgreement:
    """Spearman correlation of top-1 over the steps with a finite number in both, and the share of steps
    whose study Δ has the sign of the paper's Δ (steps with a finite Δ in both and a paper Δ != 0; a study Δ
    of exactly 0 disagrees). Missing, None and NaN values are left out."""
    steps = [step for step in study_top1 if _finite(study_top1[step]) and _finite(paper_top1.get(step))]
    rho, p = _spearman([float(study_top1[s]) for s in steps], [float(paper_top1[s]) for s in steps])
    compared = [step for step in study_delta if _finite(study_delta[step]) and _finite(paper_delta.get(step))
                and float(paper_delta[step]) != 0]
    agreeing = sum(np.sign(float(study_delta[s])) == np.sign(float(paper_delta[s])) for s in compared)
    share = agreeing / len(compared) if compared else math.nan
    return TrendAgreement(rho, p, len(steps), share, len(compared))


def _spearman(study: list[float], paper: list[float]) -> tuple[float, float]:
    if len(study) < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # constant input: NaN, said in describe
        result = stats.spearmanr(study, paper)
    return float(result.statistic), float(result.pvalue)


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
