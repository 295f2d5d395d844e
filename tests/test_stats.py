"""Step-delta statistics and the per-image predictions file, against numbers derived independently."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from roadmap.predictions import (
    PREDICTION_COLUMNS,
    PREDICTIONS_FILE,
    Predictions,
    PredictionsError,
    aligned_correct,
    read_predictions,
    write_predictions,
)
from roadmap.report.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE_LEVEL,
    NO_DELTA,
    Delta,
    bootstrap_interval,
    mcnemar_exact_p,
    paired_delta,
    predictions_delta,
    trend_agreement,
    welch_delta,
)

# ------------------------------------------------------------------------------------------ helpers


def predictions_for(correct: np.ndarray, classes: int = 10, seed: int = 0) -> Predictions:
    """Predictions whose top-1 is right exactly where `correct` is, over images 0..n-1."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, len(correct))
    k = min(5, classes)
    ranked = (label[:, None] + np.arange(k)[None, :]) % classes  # the true class, then the next ones
    top_k = np.where(correct[:, None], ranked, (ranked + 1) % classes)
    return Predictions(index=np.arange(len(correct)), label=label, top_k=top_k)


def correctness(plus: int, minus: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """(step, parent) correctness with the given counts of (step only, parent only, both, neither) right."""
    step = np.array([True] * plus + [False] * minus + [True] * both + [False] * neither)
    parent = np.array([False] * plus + [True] * minus + [True] * both + [False] * neither)
    return step, parent


def textbook_welch(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(Δ, low, high, p) by the Welch–Satterthwaite formulas."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    delta = a.mean() - b.mean()
    half = scipy_stats.t.ppf((1 + level) / 2, df) * se
    p = 2 * scipy_stats.t.sf(abs(delta) / se, df)
    return delta, delta - half, delta + half, p


# ------------------------------------------------------------------------------------------ Welch


def test_welch_hand_example():
    # Both sides: 3 seeds, sample variance 0.04. se = sqrt(2 * 0.04 / 3) = 0.163299, df = 4,
    # t_0.975(4) = 2.776445 (t table) -> half width 0.453393; t = 1 / 0.163299 = 6.123724, two-sided p = 0.003602.
    result = welch_delta([80.0, 80.2, 80.4], [79.0, 79.2, 79.4])
    assert result.test == "welch"
    assert result.delta == pytest.approx(1.0)
    assert result.ci_low == pytest.approx(1.0 - 0.453393, abs=1e-5)
    assert result.ci_high == pytest.approx(1.0 + 0.453393, abs=1e-5)
    assert result.p_value == pytest.approx(0.003602, abs=2e-6)
    assert result.significant


@pytest.mark.parametrize("step, parent, level", [
    ([78.1, 78.3, 77.9], [78.0, 78.05], 0.95),
    ([70.0, 71.5, 69.2, 70.4], [70.3, 70.1, 70.2], 0.95),
    ([81.0, 81.4], [80.2, 80.9, 81.3, 80.7, 80.5], 0.90),
])
def test_welch_matches_textbook_formula(step, parent, level):
    delta, low, high, p = textbook_welch(step, parent, level)
    result = welch_delta(step, parent, level=level)
    assert (result.delta, result.ci_low, result.ci_high, result.p_value) == pytest.approx((delta, low, high, p))


def test_welch_one_side_constant_is_fine():
    delta, low, high, p = textbook_welch([80.0, 80.0, 80.0], [79.5, 79.9, 79.7])
    result = welch_delta([80.0, 80.0, 80.0], [79.5, 79.9, 79.7])
    assert (result.ci_low, result.ci_high, result.p_value) == pytest.approx((low, high, p))


@pytest.mark.parametrize("step, parent", [([80.0], [79.0, 79.2]), ([80.0, 80.2], [79.0]), ([], [1.0, 2.0])])
def test_welch_needs_two_seeds_per_side(step, parent):
    with pytest.raises(ValueError, match="at least 2 seeds"):
        welch_delta(step, parent)


def test_welch_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        welch_delta([80.0, math.nan], [79.0, 79.2])


def test_welch_without_variance_is_undefined():
    result = welch_delta([80.0, 80.0], [79.5, 79.5, 79.5])
    assert result.delta == pytest.approx(0.5)
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high) and math.isnan(result.p_value)
    assert result.test == "welch" and not result.significant


@pytest.mark.parametrize("low, high, significant", [
    (0.1, 0.5, True), (-0.5, -0.1, True), (-0.1, 0.5, False), (0.0, 0.5, False), (0.0, 0.0, False),
    (math.nan, math.nan, False),
])
def test_significant_means_interval_excludes_zero(low, high, significant):
    assert Delta(0.3, low, high, 0.5, "welch").significant is significant


def test_no_delta():
    assert NO_DELTA.test == "" and math.isnan(NO_DELTA.delta) and not NO_DELTA.significant


def test_constants():
    assert (CONFIDENCE_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED) == (0.95, 10_000, 0)


# ------------------------------------------------------------------------------------------ McNemar


def test_mcnemar_from_prediction_files(tmp_path):
    # 20 images: 6 only the step gets right, 1 only the parent, 10 both, 3 neither.
    step, parent = correctness(plus=6, minus=1, both=10, neither=3)
    write_predictions(tmp_path / "step.csv", predictions_for(step, seed=1))
    parent_predictions = predictions_for(parent, seed=1)  # same labels
    write_predictions(tmp_path / "parent.csv", parent_predictions)
    step_read, parent_read = read_predictions(tmp_path / "step.csv"), read_predictions(tmp_path / "parent.csv")
    step_correct, parent_correct = aligned_correct(step_read, parent_read)
    assert (step_correct == step).all() and (parent_correct == parent).all()
    # Exact two-sided: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 128.
    assert mcnemar_exact_p(step_correct, parent_correct) == pytest.approx(0.125, abs=1e-12)
    result = predictions_delta(step_read, parent_read)
    assert result.test == "mcnemar" and result.p_value == pytest.approx(0.125, abs=1e-12)
    assert result.delta == pytest.approx(100 * (16 - 11) / 20)  # 25 points
    assert result.delta == pytest.approx(step_read.top1() - parent_read.top1())


def test_mcnemar_against_binomial_sum():
    step, parent = correctness(plus=3, minus=10, both=50, neither=7)
    expected = 2 * sum(math.comb(13, k) for k in range(4)) / 2 ** 13  # 2 * P(X <= 3), X ~ Bin(13, 1/2)
    assert mcnemar_exact_p(step, parent) == pytest.approx(expected, abs=1e-12)


def test_no_discordant_pairs():
    step, parent = correctness(plus=0, minus=0, both=12, neither=8)
    assert mcnemar_exact_p(step, parent) == 1.0
    assert bootstrap_interval(step, parent) == (0.0, 0.0)
    result = paired_delta(step, parent)
    assert (result.delta, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not result.significant


def test_balanced_discordance_is_not_significant():
    result = paired_delta(*correctness(plus=20, minus=20, both=100, neither=60))
    assert result.delta == 0.0 and result.ci_low < 0 < result.ci_high and result.p_value == pytest.approx(1.0)


def test_one_sided_discordance_gives_positive_interval():
    # 5 of 100 images only the step gets right: a resample misses all five with probability 0.95^100 = 0.006.
    result = paired_delta(*correctness(plus=5, minus=0, both=80, neither=15))
    assert result.delta == pytest.approx(5.0)
    assert 0 < result.ci_low <= 5.0 <= result.ci_high and result.significant
    assert result.p_value == pytest.approx(2 / 2 ** 5)


def test_paired_accepts_zero_one_and_rejects_mismatch():
    step, parent = correctness(plus=4, minus=2, both=10, neither=4)
    assert paired_delta(step.astype(int), parent.astype(int)) == paired_delta(step, parent)
    with pytest.raises(ValueError, match="same images"):
        paired_delta(step, parent[:-1])
    with pytest.raises(ValueError, match="booleans"):
        paired_delta(step.astype(int) * 2, parent)


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_is_reproducible_and_seeded():
    step, parent = correctness(plus=1_500, minus=1_000, both=35_000, neither=12_500)  # fine grid: 0.002 points
    assert bootstrap_interval(step, parent) == bootstrap_interval(step, parent, seed=BOOTSTRAP_SEED)
    assert bootstrap_interval(step, parent, seed=1) != bootstrap_interval(step, parent, seed=2)


def test_bootstrap_approaches_normal_interval_at_imagenet_size():
    n, plus, minus = 50_000, 1_500, 1_000
    step, parent = correctness(plus=plus, minus=minus, both=35_000, neither=n - 37_500)
    p_plus, p_minus = plus / n, minus / n
    half = 100 * 1.96 * math.sqrt((p_plus + p_minus - (p_plus - p_minus) ** 2) / n)  # about 0.196 points
    low, high = bootstrap_interval(step, parent)
    assert low == pytest.approx(1.0 - half, abs=0.02)
    assert high == pytest.approx(1.0 + half, abs=0.02)


def test_bootstrap_level_widens_interval():
    step, parent = correctness(plus=30, minus=15, both=100, neither=55)
    low90, high90 = bootstrap_interval(step, parent, level=0.90)
    low99, high99 = bootstrap_interval(step, parent, level=0.99)
    assert low99 < low90 < high90 < high99
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(step, parent, level=95)


def test_multinomial_bootstrap_matches_brute_force_resampling():
    n, resamples = 200, 20_000
    step, parent = correctness(plus=30, minus=15, both=100, neither=55)
    rng = np.random.default_rng(123)
    drawn = rng.integers(0, n, size=(resamples, n))  # images resampled with replacement, pairs kept together
    brute = 100 * (step[drawn].mean(axis=1) - parent[drawn].mean(axis=1))
    brute_low, brute_high = np.quantile(brute, [0.025, 0.975])
    low, high = bootstrap_interval(step, parent, resamples=resamples, seed=7)
    assert low == pytest.approx(brute_low, abs=0.5)  # interval about ±6.5 points wide
    assert high == pytest.approx(brute_high, abs=0.5)
    # The whole distribution, not only two quantiles: same spread.
    counts = np.random.default_rng(7).multinomial(n, [30 / n, 15 / n, 155 / n], size=resamples)
    assert (100 * (counts[:, 0] - counts[:, 1]) / n).std() == pytest.approx(brute.std(), rel=0.05)


# ------------------------------------------------------------------------------------------ predictions file


def test_predictions_round_trip_three_classes(tmp_path):
    original = Predictions(index=np.arange(4), label=np.array([0, 2, 1, 2]),
                           top_k=np.array([[0, 1, 2], [1, 2, 0], [1, 0, 2], [2, 0, 1]]))
    path = tmp_path / PREDICTIONS_FILE
    write_predictions(path, original)
    assert path.read_text().splitlines()[0] == "index,label,pred_1,pred_2,pred_3"
    assert path.read_text().splitlines()[2] == "1,2,1,2,0"
    read = read_predictions(path)
    assert read.k == 3 and read.top_k.dtype == np.int64
    for name in ("index", "label", "top_k"):
        assert np.array_equal(getattr(read, name), getattr(original, name))
    assert read.correct().tolist() == [True, False, True, True]
    assert read.top1() == pytest.approx(75.0)


def test_predictions_round_trip_five_of_many_classes(tmp_path):
    original = predictions_for(np.array([True, False] * 50), classes=1000, seed=3)
    write_predictions(tmp_path / "p.csv", original)
    read = read_predictions(tmp_path / "p.csv")
    assert read.k == 5 and np.array_equal(read.top_k, original.top_k) and read.top1() == pytest.approx(50.0)
    assert tuple((tmp_path / "p.csv").read_text().splitlines()[0].split(",")) == PREDICTION_COLUMNS


@pytest.mark.parametrize("text, problem", [
    ("index,pred_1\n0,1\n", "missing column 'label'"),
    ("index,label\n0,1\n", "missing column 'pred_1'"),
    ("index,label,pred_2\n0,1,1\n", "header"),
    ("index,label,pred_1,pred_2,pred_3,pred_4,pred_5,pred_6\n0,1,1,2,3,4,5,6\n", "header"),
    ("index,label,pred_1\n0,1,1.5\n", "line 2, column pred_1: '1.5' is not"),
    ("index,label,pred_1\n0,1,2\n1,x,2\n", "line 3, column label: 'x' is not"),
    ("index,label,pred_1\n0,-1,2\n", "line 2, column label"),
    ("index,label,pred_1\n0,1,2\n1,1\n", "line 3: 2 values, expected 3"),
    ("index,label,pred_1\n1,1,2\n0,1,2\n", "strictly ascending"),
    ("index,label,pred_1\n0,1,2\n0,1,2\n", "strictly ascending"),
    ("index,label,pred_1\n", "no images"),
    ("", "empty file"),
])
def test_read_predictions_rejects(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(PredictionsError) as error:
        read_predictions(path)
    message = str(error.value)
    assert problem in message and str(path) in message and "\n" not in message
    assert isinstance(error.value, ValueError)


def test_predictions_rejects_bad_arrays():
    with pytest.raises(PredictionsError, match="shape"):
        Predictions(index=np.arange(3), label=np.zeros(3, int), top_k=np.zeros((2, 5), int))
    with pytest.raises(PredictionsError, match="integers"):
        Predictions(index=np.arange(3), label=np.zeros(3), top_k=np.zeros((3, 1), int))


def test_aligned_correct_needs_same_validation_set():
    a = predictions_for(np.array([True, False, True, True]), seed=0)
    fewer = Predictions(index=a.index[:3], label=a.label[:3], top_k=a.top_k[:3])
    with pytest.raises(PredictionsError, match="not the same validation set: 4 vs 3 images"):
        aligned_correct(a, fewer)
    shifted = Predictions(index=a.index + 1, label=a.label, top_k=a.top_k)
    with pytest.raises(PredictionsError, match="1 only in the first, 1 only in the second"):
        aligned_correct(a, shifted)
    relabelled = Predictions(index=a.index, label=(a.label + 1) % 10, top_k=a.top_k)
    with pytest.raises(PredictionsError, match="4 images have different labels"):
        aligned_correct(a, relabelled)


# ------------------------------------------------------------------------------------------ trend agreement


def test_trend_monotone_and_reversed():
    study = {"a": 70.0, "b": 71.0, "c": 72.5, "d": 73.0}
    paper = {"a": 78.8, "b": 79.0, "c": 79.5, "d": 80.5}
    assert trend_agreement(study, paper, {}, {}).spearman_rho == pytest.approx(1.0)
    reversed_paper = dict(zip(paper, reversed(paper.values())))
    assert trend_agreement(study, reversed_paper, {}, {}).spearman_rho == pytest.approx(-1.0)


def test_trend_known_rank_correlation_skips_missing():
    # Ranks 1..5 against 2,1,4,3,5: sum d^2 = 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8. "x" lacks a paper number,
    # "y" has a NaN study top-1.
    study = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "x": 6.0, "y": math.nan}
    paper = {"a": 20.0, "b": 10.0, "c": 40.0, "d": 30.0, "e": 50.0, "y": 60.0}
    result = trend_agreement(study, paper, {}, {})
    assert result.n_steps == 5 and result.spearman_rho == pytest.approx(0.8)
    assert 0 < result.spearman_p < 1


def test_trend_sign_agreement():
    study_delta = {"b": 1.0, "c": -0.5, "d": 0.0, "e": 0.3, "f": math.nan, "g": -0.2, "h": None}
    paper_delta = {"b": 0.5, "c": 0.2, "d": 0.1, "e": 0.0, "f": 1.0, "g": -0.1, "h": 0.4, "i": 1.0}
    # Compared: b (agrees), c (disagrees), d (study 0: disagrees), g (agrees). e: paper 0; f, h, i: no study Δ.
    result = trend_agreement({}, {}, study_delta, paper_delta)
    assert result.n_deltas == 4 and result.sign_agreement == pytest.approx(0.5)
    assert math.isnan(result.spearman_rho) and result.n_steps == 0


def test_trend_describe():
    study = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}
    paper = {"a": 20.0, "b": 10.0, "c": 40.0, "d": 30.0, "e": 50.0}
    deltas = {"b": 1.0, "c": 1.0, "d": 1.0, "e": 1.0}
    paper_deltas = {"b": -10.0, "c": 30.0, "d": -10.0, "e": 20.0}
    text = trend_agreement(study, paper, deltas, paper_deltas).describe("Table 10")
    p = scipy_stats.spearmanr([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]).pvalue
    assert text == (f"agreement with the paper (Table 10): Spearman rank correlation 0.80 (p = {p:.2g}) "
                    "over 5 steps; 2 of 4 Δs have the paper's sign (50 %)")
    assert "\n" not in text


def test_trend_describe_when_nothing_is_computable():
    result = trend_agreement({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 3.0}, {"b": 1.0}, {"b": 0.0})
    assert math.isnan(result.spearman_rho) and math.isnan(result.sign_agreement) and result.n_deltas == 0
    text = result.describe("Table 11")
    assert "2 steps with both top-1s, needs 3" in text and "no Δ to compare" in text
    constant = trend_agreement({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0}, {}, {})
    assert math.isnan(constant.spearman_rho) and "constant top-1 over 3 steps" in constant.describe("Table 10")
