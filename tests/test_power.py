"""Which Δs a study can resolve (roadmap.report.power): every figure recomputed here independently with scipy's
noncentral t, and the noise source chosen in the stated order (store, pilot, prior) on hand-made runs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from roadmap.report.power import (
    NoiseEvidence,
    NoiseSource,
    SeedSpread,
    Verdict,
    choose_noise,
    delta_power,
    min_detectable_delta,
    plan_power,
    pooled_std,
    seeds_needed,
    spreads_by_hash,
    validation_floor,
    with_finished,
)
from roadmap.schema import Status


def hashed_plan(seeds=(0,), upto: str = "stage_ratio", hash_of=lambda name: f"hash-{name}"):
    """The smoke plan up to `upto`, each variant's configuration hash replaced by `hash_of(name)`: a plan that
    hand-logged runs (tagged with those hashes) belong to."""
    import dataclasses

    from roadmap import DataSpec, load_roadmap
    from roadmap.study.planner import StudyRequest, plan_study
    from roadmap.study.presets import get_preset

    plan = plan_study(StudyRequest(roadmap=load_roadmap("resnet50_to_convnext_t"), preset=get_preset("smoke"),
                                   data=DataSpec(), seeds=tuple(seeds), upto=upto))
    return dataclasses.replace(plan, variants=tuple(dataclasses.replace(v, config_hash=hash_of(v.name))
                                                    for v in plan.variants))


def t_test_power(delta: float, sigma: float, seeds: int, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test (equal n, common std), from the noncentral t distribution."""
    df = 2 * seeds - 2
    noncentrality = delta / sigma * math.sqrt(seeds / 2)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def scipy_min_detectable(sigma: float, seeds: int) -> float:
    high = 0.1 * sigma  # bracketed from below: far above the answer the noncentral t returns NaN
    while t_test_power(high, sigma, seeds) < 0.8:
        high *= 1.2
    return optimize.brentq(lambda delta: t_test_power(delta, sigma, seeds) - 0.8, high / 1.2, high, xtol=1e-12)


def scipy_seeds_needed(delta: float, sigma: float) -> int:
    """The fewest seeds (>= 2) with 80 % power: the power grows with the seeds, so a bisection over integers."""
    low, high = 1, 2  # power(low) < 0.8 <= power(high), with power(1) taken as 0
    while t_test_power(delta, sigma, high) < 0.8:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if t_test_power(delta, sigma, middle) >= 0.8 else (middle, high)
    return high


def test_the_validation_floor_is_the_binomial_error_the_issue_quotes():
    # 5,000 images at 87 %: +-0.93 point at 95 % (1.96 standard errors).
    floor = validation_floor(87.0, 5000)
    assert floor == pytest.approx(100 * math.sqrt(0.87 * 0.13 / 5000), rel=1e-12)
    assert 1.96 * floor == pytest.approx(0.93, abs=0.005)


@pytest.mark.parametrize("sigma,seeds", [(0.476, 3), (0.2, 2), (1.0, 5), (0.07, 10)])
def test_min_detectable_delta_matches_the_noncentral_t(sigma, seeds):
    assert min_detectable_delta(sigma, seeds) == pytest.approx(scipy_min_detectable(sigma, seeds), rel=1e-4)


def test_one_seed_has_no_seed_to_seed_test():
    assert math.isnan(min_detectable_delta(0.5, 1))


@pytest.mark.parametrize("delta,sigma", [(2.69, 0.476), (0.54, 0.476), (0.05, 0.476), (-1.23, 0.3), (5.0, 0.1)])
def test_seeds_needed_is_the_fewest_with_80_percent_power(delta, sigma):
    assert seeds_needed(delta, sigma) == scipy_seeds_needed(abs(delta), sigma)


def test_a_zero_paper_delta_needs_no_finite_seed_count():
    assert seeds_needed(0.0, 0.5) is None and seeds_needed(math.nan, 0.5) is None


def _noise(std: float, expected: float = 87.0, val_images: int = 5000):
    return choose_noise(NoiseEvidence(prior_std=std, prior_name="test", expected_top1=expected), val_images)


def test_verdicts_from_the_planned_and_the_affordable_seeds():
    noise = _noise(1.0)  # above the 0.48 floor
    resolvable = delta_power("a", "b", noise, noise, 3, 5.0, 10)
    needs = delta_power("a", "b", noise, noise, 3, 1.5, 10)
    below = delta_power("a", "b", noise, noise, 3, 0.2, 10)
    no_paper = delta_power("a", "b", noise, noise, 3, math.nan, 10)
    assert resolvable.verdict == Verdict.RESOLVABLE and resolvable.seeds_needed <= 3
    assert needs.verdict == Verdict.NEEDS_SEEDS and needs.seeds_needed == scipy_seeds_needed(1.5, 1.0)
    assert needs.verdict_text() == f"needs {needs.seeds_needed} seeds"
    assert below.verdict == Verdict.UNRESOLVABLE and below.seeds_needed > 10
    assert no_paper.verdict == Verdict.NO_PAPER_DELTA and no_paper.seeds_needed is None
    assert no_paper.min_detectable_delta == pytest.approx(scipy_min_detectable(1.0, 3), rel=1e-4)


def test_the_floor_stands_under_a_smaller_std_and_the_two_sides_pool():
    small, large = _noise(0.07), _noise(2.0)
    assert small.std == pytest.approx(validation_floor(87.0, 5000)) and small.floor_binds
    assert large.std == 2.0 and not large.floor_binds
    power = delta_power("a", "b", small, large, 3, 1.0, 10)
    assert power.noise_std == pytest.approx(math.sqrt((small.std ** 2 + 4.0) / 2))


def test_the_noise_source_is_store_then_pilot_then_prior():
    store, pilot = SeedSpread.of([80.0, 81.0, 82.5]), SeedSpread.of([70.0, 74.0])
    every = NoiseEvidence(store=store, pilot=pilot, pilot_pooled_std=3.0, pilot_name="p1", prior_std=0.1,
                          prior_name="--noise-prior")
    chosen = choose_noise(every, 5000)
    assert (chosen.source, chosen.source_std) == (NoiseSource.STORE, pytest.approx(np.std([80, 81, 82.5], ddof=1)))
    assert chosen.expected_top1 == pytest.approx(np.mean([80, 81, 82.5]))
    one_seed = NoiseEvidence(store=SeedSpread.of([80.0]), pilot=pilot, pilot_pooled_std=3.0, prior_std=0.1)
    assert (choose_noise(one_seed, 5000).source, choose_noise(one_seed, 5000).source_std) == (
        NoiseSource.PILOT, pytest.approx(np.std([70, 74], ddof=1)))
    assert choose_noise(one_seed, 5000).expected_top1 == 80.0  # the store's mean still says where the floor is
    pooled_only = NoiseEvidence(pilot_pooled_std=3.0, prior_std=0.1)
    assert (choose_noise(pooled_only, 5000).source, choose_noise(pooled_only, 5000).source_std) == (
        NoiseSource.PILOT, 3.0)
    prior = choose_noise(NoiseEvidence(prior_std=0.1), 5000)
    assert prior.source == NoiseSource.PRIOR and prior.expected_top1 == 50.0  # the binomial worst case
    assert choose_noise(NoiseEvidence(), 5000).source == NoiseSource.NONE


def test_store_spreads_read_finished_runs_of_each_configuration_only():
    runs = pd.DataFrame([
        {"config_hash": "h1", "seed": 0, "status": "finished", "top1": 80.0},
        {"config_hash": "h1", "seed": 1, "status": "finished", "top1": 82.0},
        {"config_hash": "h1", "seed": 2, "status": "failed", "top1": 10.0},
        {"config_hash": "h1", "seed": 3, "status": "diverged", "top1": 10.0},
        {"config_hash": "h2", "seed": 0, "status": "finished", "top1": 70.0},
    ])
    spreads = spreads_by_hash(runs, "top1")
    assert spreads["h1"] == SeedSpread(2, 81.0, pytest.approx(math.sqrt(2.0)))
    assert spreads["h2"].n == 1 and math.isnan(spreads["h2"].std)
    pooled = pooled_std([SeedSpread.of([1.0, 3.0]), SeedSpread.of([0.0, 2.0, 4.0]), SeedSpread.of([5.0])])
    assert pooled == pytest.approx(math.sqrt((1 * 2.0 + 2 * 4.0) / 3))


@pytest.fixture(scope="module")
def proxy_plan(roadmap_t):
    """The proxy preset's plan up to gelu, 3 seeds; at a small size, which plans faster and changes no power."""
    from roadmap.spec import DataSpec
    from roadmap.study.planner import ScaleOverrides, StudyRequest, plan_study
    from roadmap.study.presets import get_preset

    return plan_study(StudyRequest(roadmap=roadmap_t, preset=get_preset("proxy"), data=DataSpec(source="synthetic"),
                                   seeds=(0, 1, 2), upto="gelu",
                                   overrides=ScaleOverrides(image_size=32, width_multiplier=0.125)))


def test_a_proxy_plan_resolves_the_large_steps_and_not_the_small_ones(proxy_plan):
    """The issue's example: ImageNet-100 at 87 %, 5,000 validation images, 3 seeds, the paper's own stds."""
    evidence = {v.name: NoiseEvidence(prior_std=v.paper.top1_std, prior_name="paper", expected_top1=87.0)
                for v in proxy_plan.variants}
    power = plan_power(proxy_plan, evidence, 5000)
    floor = validation_floor(87.0, 5000)
    for delta in power.deltas:
        assert delta.noise_std == pytest.approx(floor)  # every paper std (<= 0.18) is below the floor
        assert delta.min_detectable_delta == pytest.approx(scipy_min_detectable(floor, 3), rel=1e-4)
        assert delta.seeds_needed == scipy_seeds_needed(abs(delta.paper_delta), floor)
    assert power.of("modern_recipe").verdict == Verdict.RESOLVABLE  # +2.69
    assert power.of("gelu").verdict == Verdict.UNRESOLVABLE  # +0.05
    assert power.of("resnet50") is None  # nothing to compare with
    assert "2 of 12 paper Δs resolvable with 3 seed(s)" in power.describe()


def test_a_finished_study_counts_with_its_own_seeds(proxy_plan):
    before = plan_power(proxy_plan, {v.name: NoiseEvidence(prior_std=0.1) for v in proxy_plan.variants}, 64)
    n_seeds = [3, 3, 1] + [0] * (len(proxy_plan.variants) - 3)
    means = [20.0, 30.0, 25.0] + [math.nan] * (len(proxy_plan.variants) - 3)
    stds = [1.0, 2.0] + [math.nan] * (len(proxy_plan.variants) - 2)
    summary = pd.DataFrame({"variant": proxy_plan.names(), "n_seeds": n_seeds, "top1_mean": means, "top1_std": stds})
    after = with_finished(before, proxy_plan, summary)
    recipe, ratio = after.of("modern_recipe"), after.of("stage_ratio")
    assert (recipe.noise.source, recipe.baseline_noise.source) == (NoiseSource.STORE, NoiseSource.STORE)
    assert ratio.noise.source == NoiseSource.PRIOR  # one finished seed: the prior it had before
    assert ratio.noise.expected_top1 == 25.0  # but the floor is taken at its own mean
    expected = math.sqrt((max(2.0, validation_floor(30.0, 64)) ** 2 + max(1.0, validation_floor(20.0, 64)) ** 2) / 2)
    assert recipe.noise_std == pytest.approx(expected)


# Hand-made runs: (variant, seed) -> top-1 of the study's own configurations, and of the pilot's.
STORE_TOP1 = {("resnet50", 0): 50.0, ("resnet50", 1): 52.0, ("resnet50", 2): 54.0, ("modern_recipe", 0): 60.0}
PILOT_TOP1 = {("resnet50", 0): 40.0, ("resnet50", 1): 41.0, ("modern_recipe", 0): 61.0, ("modern_recipe", 1): 65.0,
              ("stage_ratio", 0): 70.0}


@pytest.fixture(scope="module")
def noise_store(tmp_path_factory):
    """A store with finished runs of the study's configurations, a failed one, and a pilot study (its plan on its
    parent run, its runs under their own hashes)."""
    from roadmap.schema import Artifact
    from roadmap.tracking import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('noise') / 'mlflow.db'}"
    tracker = Tracker(uri, "noise")
    with tracker.study("earlier runs", params={}, tags={}):
        for (name, seed), top1 in STORE_TOP1.items():
            with tracker.step_run(name, seed, f"hash-{name}", params={}, tags={}, config={}) as run:
                run.log_final({"top1": top1}, Status.FINISHED)
        with pytest.raises(RuntimeError), tracker.step_run("modern_recipe", 1, "hash-modern_recipe", params={},
                                                           tags={}, config={}):
            raise RuntimeError("a failed run has no top-1 to count")
    pilot = hashed_plan(seeds=(0, 1), hash_of=lambda name: f"pilot-{name}")
    with tracker.study("pilot", params={}, tags={}) as pilot_id:
        tracker.log_study_text(pilot_id, pilot.to_json(), Artifact.PLAN)
        for (name, seed), top1 in PILOT_TOP1.items():
            with tracker.step_run(name, seed, f"pilot-{name}", params={}, tags={}, config={}) as run:
                run.log_final({"top1": top1}, Status.FINISHED)
    return uri, pilot_id


def test_the_noise_comes_from_the_store_then_the_pilot_then_the_prior(noise_store, tmp_path, monkeypatch):
    from roadmap.study.estimate import EstimateSettings, estimate_plan
    from roadmap.study.settings import RunSettings, Study

    uri, pilot_id = noise_store
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = Study(plan=hashed_plan(seeds=(0, 1, 2)), run=RunSettings(progress=False), tracking_uri=uri,
                  experiment="noise", checkpoint_dir=tmp_path)

    def noises(**settings):
        power = estimate_plan(study, EstimateSettings(**settings)).power
        recipe, ratio = power.of("modern_recipe"), power.of("stage_ratio")
        return recipe.baseline_noise, recipe.noise, ratio.noise  # resnet50, modern_recipe, stage_ratio

    resnet, recipe, ratio = noises(pilot_study=pilot_id, noise_prior=0.3)
    assert (resnet.source, resnet.source_std) == (NoiseSource.STORE, pytest.approx(2.0))  # 50, 52, 54
    assert (recipe.source, recipe.source_std) == (NoiseSource.PILOT, pytest.approx(np.std([61, 65], ddof=1)))
    assert recipe.expected_top1 == 60.0  # its one finished seed in the store
    assert (ratio.source, ratio.source_std) == (NoiseSource.PILOT, pytest.approx(pooled_std(
        [SeedSpread.of([40, 41]), SeedSpread.of([61, 65])])))  # the pilot has one seed of it: pooled
    resnet, recipe, ratio = noises(noise_prior=0.3)
    assert resnet.source == NoiseSource.STORE
    assert (recipe.source, recipe.source_std, ratio.source, ratio.source_std) == (
        NoiseSource.PRIOR, 0.3, NoiseSource.PRIOR, 0.3)
    _, recipe, _ = noises()
    assert (recipe.source, recipe.source_std) == (NoiseSource.PRIOR, 0.07)  # Table 10's top1_std of the step
    assert "paper" in recipe.detail


def test_roadmap_md_says_how_many_deltas_the_finished_study_resolves(noise_store, tmp_path, monkeypatch):
    from roadmap.report.results import summarize
    from roadmap.report.runs_table import load_runs
    from roadmap.report.tables import to_markdown
    from roadmap.study.estimate import EstimateSettings, closing_power_line, estimate_plan
    from roadmap.study.settings import RunSettings, Study

    uri, _ = noise_store
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = Study(plan=hashed_plan(seeds=(0, 1, 2)), run=RunSettings(progress=False), tracking_uri=uri,
                  experiment="noise", checkpoint_dir=tmp_path)
    estimate = estimate_plan(study, EstimateSettings(noise_prior=0.3))
    summary = summarize(load_runs(uri, "noise"), study.plan)
    line = closing_power_line(estimate, study.plan, summary)
    assert line.startswith("power: ") and "of 2 paper Δs resolvable with 3 seed(s)" in line
    assert "store" in line and "64 validation images" in line  # smoke: 64
    last = to_markdown(summary, "Table 10", line).rstrip().splitlines()[-2:]
    assert last[0].startswith("agreement with the paper (Table 10)") and last[1] == line
