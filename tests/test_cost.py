"""What a study costs before it runs (roadmap.study.cost, roadmap.study.estimate): every figure recomputed here
from the measured img/s and the images, the img/s source chosen in the stated order on hand-made runs, the
makespan under each launcher, the budget refused before anything is submitted, and plan.json's plan_costs."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
from test_power import hashed_plan, scipy_min_detectable

from roadmap.schema import Status, Tag
from roadmap.study.cost import RateSource, SplitSizes, makespan, run_images, target_device
from roadmap.study.estimate import (
    ESTIMATE_KEYS,
    BudgetExceeded,
    EstimateSettings,
    budget_refusal,
    estimate_plan,
    plan_json,
)
from roadmap.study.settings import LaunchSettings, RunSettings, Study
from roadmap.variants import StudyPlan

EXPERIMENT = "costs"
# Hand-made figures: resnet50 has a --benchmark run on this machine's device (and a slow finished run, which the
# benchmark comes before); modern_recipe one on another GPU only, and finished runs on this device; stage_ratio
# nothing.
BENCH = {"resnet50": (400.0, 1000.0)}
RUN_WALL_S = {("modern_recipe", 0): (360.0, 1), ("modern_recipe", 1): (720.0, 2), ("resnet50", 0): (36_000.0, 1)}


def test_makespan_starts_each_run_on_the_first_free_slot():
    assert makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0  # 3 | 1 + 1 + 1
    assert makespan([2.0, 2.0, 2.0], 2) == 4.0
    assert makespan([2.0, 2.0, 2.0], 1) == 6.0  # inline: one after another
    assert makespan([2.0, 5.0, 1.0], None) == 5.0  # SLURM without a throttle: all at once
    assert makespan([], 3) == 0.0


def test_a_run_trains_whole_batches_every_epoch_and_evaluates_after_each(plan):
    variant = dataclasses.replace(plan.variants[0], recipe=dataclasses.replace(plan.variants[0].recipe, epochs=3))
    assert variant.recipe.batch_size == 32
    assert run_images(variant, SplitSizes(train=130, val=50)) == (3 * 128, 3 * 50)


@pytest.fixture(scope="module")
def plan() -> StudyPlan:
    """The smoke plan up to stage_ratio, seeds 0-2, its hashes named after the variants."""
    return hashed_plan(seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def store(tmp_path_factory, plan):
    from roadmap.tracking import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('costs') / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT)
    here = target_device("cpu")
    with tracker.study("hand-made", params={}, tags={}):
        for name, (train, evaluation) in BENCH.items():
            tracker.log_benchmark(name, {"bench_train_img_per_s": train, "bench_eval_img_per_s": evaluation},
                                  params={}, tags={Tag.CONFIG_HASH: f"hash-{name}",
                                                   Tag.BENCHMARK: f"{here.described}, batch 32, 32x32 px, fp32"})
        tracker.log_benchmark("modern_recipe", {"bench_train_img_per_s": 1e6, "bench_eval_img_per_s": 1e6},
                              params={}, tags={Tag.CONFIG_HASH: "hash-modern_recipe",
                                               Tag.BENCHMARK: "cuda (NVIDIA Other GPU), batch 256, 32x32 px, fp32"})
        for (name, seed), (wall, processes) in RUN_WALL_S.items():
            tags = {Tag.DEVICE: f"{here.model} x{processes}"}
            with tracker.step_run(name, seed, f"hash-{name}", params={}, tags=tags, config={}) as run:
                run.log_final({"top1": 50.0 + seed, "wall_time_s": wall}, Status.FINISHED)
    return uri


def study_of(plan: StudyPlan, uri: str, tmp_path, **launch) -> Study:
    return Study(plan=plan, run=RunSettings(device="cpu", progress=False), launch=LaunchSettings(**launch),
                 tracking_uri=uri, experiment=EXPERIMENT, checkpoint_dir=tmp_path / "checkpoints",
                 results_dir=tmp_path / "results")


def test_the_rate_comes_from_a_benchmark_then_finished_runs_else_it_is_unknown(store, plan, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the estimate leaves this process's threads alone
    estimate = estimate_plan(study_of(plan, store, tmp_path), EstimateSettings(measure_command="MEASURE IT"))
    cost = estimate.cost
    resnet, recipe, ratio = (cost.run(name) for name in ("resnet50", "modern_recipe", "stage_ratio"))
    assert resnet.throughput.source == RateSource.BENCHMARK  # before its 10-hour finished run
    train, evaluation = BENCH["resnet50"]
    assert (resnet.train_images, resnet.eval_images) == (128, 64)  # smoke: 128 images, batch 32, 1 epoch
    assert resnet.device_hours == pytest.approx((128 / train + 64 / evaluation) / 3600)
    assert recipe.throughput.source == RateSource.RUNS  # the other GPU's benchmark does not count
    assert recipe.device_hours == pytest.approx((360 * 1 + 720 * 2) / 2 / 3600)
    assert ratio.throughput.source == RateSource.UNKNOWN and cost.unknown == ("stage_ratio",)
    assert math.isnan(cost.total_hours) and math.isnan(cost.makespan_hours)
    assert cost.finished == {("hash-resnet50", 0), ("hash-modern_recipe", 0), ("hash-modern_recipe", 1)}
    refusal = budget_refusal(estimate, 100.0)
    assert "cannot be checked" in refusal and "stage_ratio" in refusal and "MEASURE IT" in refusal
    from roadmap.study.plan_table import format_estimate_table

    text = format_estimate_table(plan, estimate)
    assert "unknown" in text and "MEASURE IT" in text and estimate.power.describe() in text


def test_a_budget_over_the_cost_is_refused_before_anything_is_submitted(store, plan, tmp_path, monkeypatch):
    from roadmap.study.driver import run_study
    from roadmap.tracking import load_step_runs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    known = dataclasses.replace(plan, variants=plan.variants[:2])  # both with a known cost
    study = study_of(known, store, tmp_path)
    before = len(load_step_runs(store, EXPERIMENT, "study")), len(load_step_runs(store, EXPERIMENT))
    estimate = estimate_plan(study, EstimateSettings())
    remaining = estimate.cost.remaining_hours
    assert remaining == pytest.approx(2 * estimate.cost.run("resnet50").device_hours  # seeds 1, 2
                                      + 1 * estimate.cost.run("modern_recipe").device_hours)  # seed 2
    with pytest.raises(BudgetExceeded, match=rf"needs {remaining:.3g} CPU-hours \(3 run\(s\) to train") as refused:
        run_study(study, EstimateSettings(budget_gpu_hours=remaining / 2))
    assert "largest: modern_recipe" in str(refused.value) and "\n" not in str(refused.value)
    assert (len(load_step_runs(store, EXPERIMENT, "study")), len(load_step_runs(store, EXPERIMENT))) == before
    assert not (tmp_path / "checkpoints").exists()
    assert budget_refusal(estimate, remaining * 2) is None


def test_plan_json_carries_the_costs_and_still_reads_as_the_plan(store, plan, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    estimate = estimate_plan(study_of(plan, store, tmp_path), EstimateSettings())
    text = plan_json(plan, estimate)
    assert StudyPlan.from_json(text) == plan
    costs = json.loads(text)["plan_costs"]
    assert [row["variant"] for row in costs["variants"]] == plan.names()
    assert set(costs["variants"][0]) == {"variant", *ESTIMATE_KEYS}
    assert costs["variants"][0]["gpu_hours"] == pytest.approx(estimate.cost.run("resnet50").device_hours)
    assert costs["total_gpu_hours"] is None and costs["unknown_rates"] == ["stage_ratio"]


def test_dry_run_json_measures_here_and_refuses_the_budget_in_one_line(cli, tmp_path):
    """--plan-measure on this machine: cost = images / measured img/s, the local launcher's makespan, the power
    recomputed with scipy from the printed noise, and a budget below the total refused with exit code 2."""
    result = cli("--preset", "smoke", "--upto", "stage_ratio", "--seeds", "0,1", "--dry-run", "--json",
                 "--plan-measure", "--launcher", "local", "--max-parallel", "2", "--noise-prior", "1.5",
                 "--budget-gpu-hours", "1e-9", "--no-progress", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --budget-gpu-hours 1e-09: this plan needs")
    assert len(result.stderr.strip().splitlines()) == 1
    plan = json.loads(result.stdout)
    rows = plan["variants"]
    hours = []
    for row in rows:
        assert row["rate_source"] == "measured"
        assert row["gpu_hours"] == pytest.approx(
            (row["train_images"] / row["train_img_per_s"] + row["eval_images"] / row["eval_img_per_s"]) / 3600)
        assert row["variant_gpu_hours"] == pytest.approx(2 * row["gpu_hours"])
        hours += [row["gpu_hours"]] * 2  # seeds 0, 1 in the launcher's order
    assert plan["total_gpu_hours"] == pytest.approx(sum(hours))
    slots = [0.0, 0.0]  # two jobs at once, each run on the first free one
    for duration in hours:
        slots[slots.index(min(slots))] += duration
    assert (plan["parallel_jobs"], plan["makespan_hours"]) == (2, pytest.approx(max(slots)))
    for row in rows[1:]:
        assert row["noise_source"] == "prior" and row["noise_std"] >= 1.5
        assert row["min_detectable_delta"] == pytest.approx(scipy_min_detectable(row["noise_std"], 2), rel=1e-4)
    assert rows[0]["verdict"] is None and rows[1]["verdict"] in ("resolvable", "needs_seeds", "unresolvable")
    assert not (tmp_path / "mlflow.db").exists()  # a dry run reads the store, never creates it
