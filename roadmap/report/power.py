"""Which of a study's Δs it can resolve: each configuration's seed-to-seed noise and where it comes from, the
validation set's sampling error as a floor under it, and the power of the two-sample t-test over seeds.

The noise of a configuration comes, in order, from its finished runs in the store, a pilot study's runs of the
same variant, or a stated prior; the binomial sampling error of the validation set at the expected top-1 is a
floor under it. A Δ's minimum detectable size and the seeds it needs are statsmodels' `TTestIndPower` at
α = 0.05 two-sided and 80 % power, with the two sides' noise pooled (equal seeds on both sides).
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestIndPower

from ..errors import SpecError
from ..schema import Status
from ..variants import StudyPlan, Variant

ALPHA = 0.05  # two-sided
POWER = 0.80
# Seeds per variant a study may run when no budget says otherwise: beyond ten, rerunning a whole roadmap per
# seed is no longer an ablation study anyone reruns.
MAX_AFFORDABLE_SEEDS = 10
# Without any expected top-1, the floor is taken at 50 %, where the binomial error is largest: an upper bound.
WORST_CASE_TOP1 = 50.0


class NoiseSource(StrEnum):
    """Where a configuration's seed-to-seed std comes from, in the order they are tried."""

    STORE = "store"  # finished runs of this configuration (same hash) in the tracking store
    PILOT = "pilot"  # the pilot study's finished runs of this variant (or its std pooled over its variants)
    PRIOR = "prior"  # --noise-prior, else the paper's top1_std of the step
    NONE = "floor"  # nothing known: the validation floor alone


class Verdict(StrEnum):
    RESOLVABLE = "resolvable"  # the planned seeds reach 80 % power at the paper's Δ
    NEEDS_SEEDS = "needs_seeds"  # more seeds do, up to the affordable count (seeds_needed says how many)
    UNRESOLVABLE = "unresolvable"  # not even the affordable seed count does (or the paper's Δ is 0)
    NO_PAPER_DELTA = "no_paper_delta"  # the paper has no Δ for it: only the minimum detectable Δ is given


@dataclass(frozen=True)
class SeedSpread:
    """Top-1 (%) over the finished seeds of one configuration: how many, their mean, their sample std."""

    n: int = 0
    mean: float = math.nan
    std: float = math.nan  # NaN below 2 seeds

    @classmethod
    def of(cls, values: Iterable[float]) -> SeedSpread:
        finite = np.asarray([value for value in values if math.isfinite(value)], dtype=float)
        if not len(finite):
            return cls()
        return cls(len(finite), float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else math.nan)


@dataclass(frozen=True)
class NoiseEvidence:
    """Everything known of one variant's seed-to-seed noise before choosing among the sources."""

    store: SeedSpread = SeedSpread()
    pilot: SeedSpread = SeedSpread()
    # The pilot's std pooled over its variants with >= 2 seeds (points), for a variant it has fewer of.
    pilot_pooled_std: float = math.nan
    pilot_name: str = ""  # the pilot study's run id
    prior_std: float = math.nan  # points
    prior_name: str = ""  # "--noise-prior", "the paper's top1_std (Table 10)"
    expected_top1: float = math.nan  # %, --expected-top1


@dataclass(frozen=True)
class Noise:
    """One configuration's per-run noise: the chosen source's std, and the validation floor under it."""

    source: NoiseSource
    source_std: float  # points (NaN for NoiseSource.NONE)
    detail: str  # what the source's figure is made of
    expected_top1: float  # %, where the floor is taken
    expected_from: str
    floor_std: float  # points: the binomial std of top-1 over the validation images at expected_top1

    @property
    def std(self) -> float:
        """The per-run std used: the source's, but never below the validation floor."""
        return self.floor_std if not math.isfinite(self.source_std) else max(self.source_std, self.floor_std)

    @property
    def floor_binds(self) -> bool:
        return not math.isfinite(self.source_std) or self.floor_std > self.source_std


def validation_floor(expected_top1: float, val_images: int) -> float:
    """Binomial std (points) of top-1 measured on `val_images` images at a true accuracy of `expected_top1` %."""
    if val_images < 1 or not 0 <= expected_top1 <= 100:
        raise SpecError(f"validation floor of {val_images} images at {expected_top1} % is not valid; "
                        "needs >= 1 image and a top-1 in 0..100 %")
    return 100.0 * float(stats.binom(val_images, expected_top1 / 100.0).std()) / val_images


def choose_noise(evidence: NoiseEvidence, val_images: int) -> Noise:
    """The first source that has a std (store, pilot, pooled pilot, prior), and the floor at the expected top-1."""
    if evidence.store.n >= 2:
        source, std = NoiseSource.STORE, evidence.store.std
        detail = f"{evidence.store.n} finished seeds of this configuration"
    elif evidence.pilot.n >= 2:
        source, std = NoiseSource.PILOT, evidence.pilot.std
        detail = f"pilot study {evidence.pilot_name}, {evidence.pilot.n} seeds of this variant"
    elif math.isfinite(evidence.pilot_pooled_std):
        source, std = NoiseSource.PILOT, evidence.pilot_pooled_std
        detail = f"pilot study {evidence.pilot_name}, pooled over its variants"
    elif math.isfinite(evidence.prior_std):
        source, std, detail = NoiseSource.PRIOR, evidence.prior_std, evidence.prior_name
    else:
        source, std, detail = NoiseSource.NONE, math.nan, "no seed-to-seed figure: the validation floor alone"
    if evidence.store.n:
        expected, expected_from = evidence.store.mean, "mean of this configuration's finished runs"
    elif evidence.pilot.n:
        expected, expected_from = evidence.pilot.mean, "mean of the pilot's runs of this variant"
    elif math.isfinite(evidence.expected_top1):
        expected, expected_from = evidence.expected_top1, "--expected-top1"
    else:
        expected, expected_from = WORST_CASE_TOP1, "50 %, the binomial worst case (no expected top-1 given)"
    return Noise(source, std, detail, expected, expected_from, validation_floor(expected, val_images))


# ------------------------------------------------------------------------------------------- power


def min_detectable_delta(noise_std: float, seeds: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |Δ| (points) a two-sided two-sample t-test over `seeds` seeds a side detects with `power`;
    NaN below 2 seeds (no seed-to-seed test)."""
    if seeds < 2 or not math.isfinite(noise_std):
        return math.nan
    effect = TTestIndPower().solve_power(effect_size=None, nobs1=seeds, alpha=alpha, power=power, ratio=1.0,
                                         alternative="two-sided")
    return float(effect) * noise_std


def power_at(delta: float, noise_std: float, seeds: int, alpha: float = ALPHA) -> float:
    """The two-sided t-test's power to detect `delta` (points) with `seeds` seeds a side."""
    if seeds < 2:
        return 0.0
    if noise_std == 0:
        return 1.0 if delta else 0.0
    effect = abs(delta) / noise_std
    power = float(TTestIndPower().power(effect_size=effect, nobs1=seeds, alpha=alpha, ratio=1.0,
                                        alternative="two-sided"))
    # Beyond ~10 standard deviations scipy's noncentral t returns NaN; 2 seeds already have 99 % power at 10.
    return 1.0 if math.isnan(power) and effect >= 10 else power


def seeds_needed(delta: float, noise_std: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The fewest seeds a side (>= 2) with which the t-test detects `delta`; None when Δ is 0 (no count does)."""
    if not math.isfinite(delta) or delta == 0:
        return None
    if noise_std == 0:  # no noise at all (every seed and image agree): any Δ shows with the fewest seeds
        return 2
    if power_at(delta, noise_std, 2, alpha) >= power:
        return 2
    solved = TTestIndPower().solve_power(effect_size=abs(delta) / noise_std, nobs1=None, alpha=alpha, power=power,
                                         ratio=1.0, alternative="two-sided")
    seeds = max(2, math.ceil(float(solved) - 1e-9))
    # The solver's tolerance may leave the ceiling a seed off either way: the fewest seeds that reach the power.
    while power_at(delta, noise_std, seeds, alpha) < power:
        seeds += 1
    while seeds > 2 and power_at(delta, noise_std, seeds - 1, alpha) >= power:
        seeds -= 1
    return seeds


@dataclass(frozen=True)
class DeltaPower:
    """What one variant's Δ to its baseline can resolve with the planned seeds."""

    variant: str
    baseline: str
    noise: Noise  # the variant's
    baseline_noise: Noise
    noise_std: float  # points: the per-run std of the test, both sides pooled (each at least its floor)
    seeds: int
    min_detectable_delta: float  # points, NaN below 2 seeds
    paper_delta: float  # points, NaN when the paper has no Δ for it
    seeds_needed: int | None
    verdict: Verdict
    affordable_seeds: int

    @property
    def noise_source(self) -> str:
        """"store", or "store+prior" when the two sides come from different sources."""
        sources = [self.noise.source, self.baseline_noise.source]
        return "+".join(dict.fromkeys(sorted(sources, key=list(NoiseSource).index)))

    @property
    def floor_binds(self) -> bool:
        return self.noise.floor_binds and self.baseline_noise.floor_binds

    def verdict_text(self) -> str:
        if self.verdict == Verdict.NEEDS_SEEDS:
            return f"needs {self.seeds_needed} seeds"
        if self.verdict == Verdict.UNRESOLVABLE:
            return ("paper Δ is 0" if self.seeds_needed is None else
                    f"below what {self.affordable_seeds} seeds resolve (needs {self.seeds_needed})")
        return "resolvable" if self.verdict == Verdict.RESOLVABLE else "no paper Δ"


def delta_power(variant: str, baseline: str, noise: Noise, baseline_noise: Noise, seeds: int, paper_delta: float,
                affordable_seeds: int, alpha: float = ALPHA, power: float = POWER) -> DeltaPower:
    """The minimum detectable Δ, the seeds the paper's Δ needs and the verdict, for one pair of configurations."""
    pooled = math.sqrt((noise.std ** 2 + baseline_noise.std ** 2) / 2)
    needed = seeds_needed(paper_delta, pooled, alpha, power)
    if not math.isfinite(paper_delta):
        verdict = Verdict.NO_PAPER_DELTA
    elif needed is not None and needed <= seeds:
        verdict = Verdict.RESOLVABLE
    elif needed is not None and needed <= affordable_seeds:
        verdict = Verdict.NEEDS_SEEDS
    else:
        verdict = Verdict.UNRESOLVABLE
    return DeltaPower(variant, baseline, noise, baseline_noise, pooled, seeds,
                      min_detectable_delta(pooled, seeds, alpha, power), paper_delta, needed, verdict,
                      affordable_seeds)


@dataclass(frozen=True)
class StudyPower:
    """Every Δ of a plan with its power, and the inputs they share."""

    deltas: tuple[DeltaPower, ...]
    seeds: int
    val_images: int
    affordable_seeds: int
    affordable_from: str  # "default", or the budget that sets it
    # Per variant: what was known of its noise (kept so that the figures can be recomputed after the study).
    evidence: Mapping[str, NoiseEvidence] = field(default_factory=dict)
    alpha: float = ALPHA
    power: float = POWER

    def of(self, variant: str) -> DeltaPower | None:
        return next((delta for delta in self.deltas if delta.variant == variant), None)

    def count(self, verdict: Verdict) -> int:
        return sum(delta.verdict == verdict for delta in self.deltas)

    def describe(self) -> str:
        """One line: how many of the paper's Δs the study resolves, and with what noise."""
        with_paper = [delta for delta in self.deltas if delta.verdict != Verdict.NO_PAPER_DELTA]
        sources = Counter(delta.noise_source for delta in self.deltas)
        noise = ", ".join(f"{source} {count}" for source, count in sources.most_common()) or "none"
        if not with_paper:
            head = f"power: the paper gives none of these {len(self.deltas)} Δs"
        else:
            head = (f"power: {self.count(Verdict.RESOLVABLE)} of {len(with_paper)} paper Δs resolvable with "
                    f"{self.seeds} seed(s); {self.count(Verdict.NEEDS_SEEDS)} need more (up to "
                    f"{self.affordable_seeds}, {self.affordable_from}), {self.count(Verdict.UNRESOLVABLE)} are below "
                    "what that resolves")
        return (f"{head} (two-sided t-test over seeds, α {self.alpha:g}, {100 * self.power:.0f} % power; noise "
                f"from: {noise}; floor: binomial over {self.val_images:,} validation images)")


def plan_power(plan: StudyPlan, evidence: Mapping[str, NoiseEvidence], val_images: int, *,
               affordable_seeds: int = MAX_AFFORDABLE_SEEDS, affordable_from: str = "default") -> StudyPower:
    """The power of every compared variant of `plan` (evidence keyed by variant name; missing = nothing known)."""
    noises = {variant.name: choose_noise(evidence.get(variant.name, NoiseEvidence()), val_images)
              for variant in plan.variants if variant.trains}
    deltas = []
    for variant in plan.variants:
        baseline = _baseline(plan, variant)
        if baseline is None or baseline.name not in noises:
            continue
        paper_delta = variant.paper.top1 - baseline.paper.top1
        deltas.append(delta_power(variant.name, baseline.name, noises[variant.name], noises[baseline.name],
                                  len(plan.seeds), paper_delta, affordable_seeds))
    return StudyPower(tuple(deltas), len(plan.seeds), val_images, affordable_seeds, affordable_from, dict(evidence))


def _baseline(plan: StudyPlan, variant: Variant) -> Variant | None:
    """The variant `variant` is compared with (as the summary compares), or None."""
    if variant.baseline is None or not variant.trains:
        return None
    return plan.variant(variant.baseline)


def with_finished(power: StudyPower, plan: StudyPlan, summary: pd.DataFrame) -> StudyPower:
    """The power recomputed with the study's own finished seeds as the store (a study's closing line)."""
    spreads = {row["variant"]: SeedSpread(int(row["n_seeds"]), float(row["top1_mean"]), float(row["top1_std"]))
               for row in summary.to_dict("records")}
    evidence = {name: _replace_store(power.evidence.get(name, NoiseEvidence()), spreads.get(name, SeedSpread()))
                for name in plan.names()}
    return plan_power(plan, evidence, power.val_images, affordable_seeds=power.affordable_seeds,
                      affordable_from=power.affordable_from)


def _replace_store(evidence: NoiseEvidence, spread: SeedSpread) -> NoiseEvidence:
    return dataclasses.replace(evidence, store=spread) if spread.n else evidence


# ------------------------------------------------------------------------------ evidence from runs


def spreads_by_hash(runs: pd.DataFrame, value: str) -> dict[str, SeedSpread]:
    """Per configuration hash: the spread of `value` over its finished runs (any seed), one per seed."""
    finished = runs[runs["status"] == Status.FINISHED].drop_duplicates(["config_hash", "seed"])
    return {str(config_hash): SeedSpread.of(group[value].astype(float))
            for config_hash, group in finished.groupby("config_hash") if config_hash}


def pooled_std(spreads: Sequence[SeedSpread]) -> float:
    """The std pooled over spreads of >= 2 seeds (each weighted by its n - 1); NaN when there are none."""
    usable = [spread for spread in spreads if spread.n >= 2 and math.isfinite(spread.std)]
    if not usable:
        return math.nan
    return math.sqrt(sum((s.n - 1) * s.std ** 2 for s in usable) / sum(s.n - 1 for s in usable))
