"""Results: MLflow step runs -> one row per roadmap step, mean ± std over seeds, Δ to the parent, paper columns."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import plan_with_hashes

from roadmap.errors import SpecError
from roadmap.report.results import SUMMARY_COLUMNS, ResultsError, read_summary_csv, study_summary, summarize
from roadmap.report.runs_table import RUN_COLUMNS, load_runs
from roadmap.report.tables import write_results
from roadmap.schema import Status
from roadmap.steps import load_roadmap
from roadmap.tracking import Tracker, TrackingError

ROADMAP = "resnet50_to_convnext_t"
EXPERIMENT = "fake_study"
COSTS = {"resnet50": (25.56e6, 4.09), "modern_recipe": (25.56e6, 4.09), "move_up_dwconv": (28.4e6, 4.07),
         "kernel_5": (28.5e6, 4.10), "kernel_7": (28.6e6, 4.15), "gelu": (28.6e6, 4.15)}
# (step, seed) -> top-1, or an outcome that is not a finished result.
TOP1 = {
    ("resnet50", 0): 61.25, ("resnet50", 1): 60.5,
    ("modern_recipe", 0): 64.125, ("modern_recipe", 1): "failed",
    ("move_up_dwconv", 0): 66.0, ("move_up_dwconv", 1): 67.5, ("move_up_dwconv", 2): 65.75,
    ("kernel_5", 0): 66.5, ("kernel_5", 1): 68.25,
    ("kernel_7", 0): 69.0, ("kernel_7", 1): "diverged",
    ("gelu", 0): "failed",
}


def final_metrics(step: str, seed: int, top1: float) -> dict:
    params, gmacs = COSTS[step]
    return {"top1": top1, "top5": top1 + 20 + seed / 8, "top1_best": top1 + 1, "params": params, "gmacs": gmacs,
            "train_img_per_s": 100.0 + seed, "eval_img_per_s": 300.0 + 2 * seed, "peak_process_rss_mib": 500.0 + seed,
            "wall_time_s": 10.0 + seed}


def step_tags(step, preset: str = "smoke") -> dict:
    return {"order": step.order, "group": step.group, "adopted": step.adopted, "baseline": step.parent or "",
            "roadmap": ROADMAP, "dataset": "synthetic (10 classes)", "data_kind": "synthetic", "preset": preset,
            "device": "cpu"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study logged without training: seeds, a failure, a divergence, a superseded hash, another roadmap."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    roadmap = load_roadmap(ROADMAP)
    tracker = Tracker(uri, EXPERIMENT)
    with tracker.study("fake", params={}, tags={}):
        # Seed 0 of resnet50 under an older configuration, then re-run: the latest completed run counts.
        old = roadmap.step("resnet50")
        with tracker.step_run("resnet50", 0, "old", params={}, tags=step_tags(old), config={}) as run:
            run.log_final(final_metrics("resnet50", 0, 1.0), Status.FINISHED)
        for (name, seed), top1 in TOP1.items():
            step = roadmap.step(name)
            try:
                with tracker.step_run(name, seed, f"hash-{name}", params={}, tags=step_tags(step), config={}) as run:
                    run.log_epoch({"train_loss": 1.0, "val_top1": 1.0, "train_img_per_s": 1.0}, 0)
                    if top1 == "failed":
                        raise RuntimeError("simulated crash")
                    if top1 == "diverged":
                        run.log_final(final_metrics(name, seed, 0.5), Status.DIVERGED, "nan loss")
                    else:
                        run.log_final(final_metrics(name, seed, top1), Status.FINISHED)
            except RuntimeError:
                pass
        with tracker.step_run("kernel_7", 2, "hash-kernel_7", params={}, tags=step_tags(step), config={}) as run:
            run.log_metrics({"bench_train_img_per_s": 55.0, "bench_eval_img_per_s": 155.0,
                             "bench_peak_memory_mib": 700.0})
            run.log_final(final_metrics("kernel_7", 2, 70.0), Status.FINISHED)
        # A run of another roadmap in the same experiment is ignored by summarize.
        with tracker.step_run("gelu", 5, "x", params={}, tags=step_tags(step) | {"roadmap": "other"}, config={}) as run:
            run.log_final(final_metrics("gelu", 5, 99.0), Status.FINISHED)
    return uri, roadmap


@pytest.fixture(scope="module")
def plan():
    return plan_with_hashes(ROADMAP, seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def summary(study, plan):
    uri, _ = study
    return summarize(load_runs(uri, EXPERIMENT), plan)


def finished_top1(name: str) -> list[float]:
    values = [top1 for (step, _), top1 in TOP1.items() if step == name and isinstance(top1, float)]
    return values + ([70.0] if name == "kernel_7" else [])


def row(summary: pd.DataFrame, step: str) -> pd.Series:
    return summary.set_index("variant").loc[step]


def test_load_runs_has_one_row_per_run_key_with_status_and_metrics(study):
    uri, _ = study
    runs = load_runs(uri, EXPERIMENT)
    assert len(runs) == 1 + len(TOP1) + 2
    assert tuple(runs.columns) == RUN_COLUMNS
    assert set(runs["data_kind"]) == {"synthetic"}
    by_key = runs.set_index(["step", "seed", "config_hash"])
    assert by_key.loc[("modern_recipe", 1, "hash-modern_recipe"), "status"] == "failed"
    assert by_key.loc[("kernel_7", 1, "hash-kernel_7"), "status"] == "diverged"
    assert by_key.loc[("kernel_7", 0, "hash-kernel_7"), "status"] == "finished"
    assert math.isnan(by_key.loc[("gelu", 0, "hash-gelu"), "top1"])
    assert math.isnan(by_key.loc[("kernel_5", 0, "hash-kernel_5"), "bench_train_img_per_s"])
    assert by_key.loc[("kernel_7", 2, "hash-kernel_7"), "bench_eval_img_per_s"] == 155.0
    # The final train_img_per_s, not the per-epoch 1.0 logged before it.
    assert by_key.loc[("resnet50", 1, "hash-resnet50"), "train_img_per_s"] == 101.0
    assert by_key.loc[("move_up_dwconv", 2, "hash-move_up_dwconv"), "order"] == 7
    assert list(runs["order"]) == sorted(runs["order"])


def test_summary_has_every_step_in_roadmap_order_and_exact_columns(summary, study):
    _, roadmap = study
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["variant"]) == list(summary["step"]) == roadmap.names()
    assert list(summary["order"]) == list(range(len(roadmap.steps)))
    assert list(summary["adopted"]) == [step.adopted for step in roadmap.steps]
    assert list(summary["baseline"]) == [step.parent or "" for step in roadmap.steps]
    assert set(summary["ablation"]) == {"cumulative"}


def test_means_and_stds_equal_numpys_over_finished_seeds(summary):
    for name in ("resnet50", "move_up_dwconv", "kernel_5", "kernel_7", "modern_recipe"):
        values = np.array(finished_top1(name))
        got = row(summary, name)
        assert got["top1_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert got["n_seeds"] == len(values)
        if len(values) > 1:
            assert got["top1_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        else:
            assert math.isnan(got["top1_std"])
    seeds = [seed for (step, seed), top1 in TOP1.items() if step == "move_up_dwconv"]
    top5 = np.array([final_metrics("move_up_dwconv", s, TOP1[("move_up_dwconv", s)])["top5"] for s in seeds])
    assert row(summary, "move_up_dwconv")["top5_mean"] == pytest.approx(top5.mean(), abs=1e-12)
    assert row(summary, "move_up_dwconv")["top5_std"] == pytest.approx(top5.std(ddof=1), abs=1e-12)
    # The superseded resnet50 run (hash "old", top-1 1.0) does not count.
    assert row(summary, "resnet50")["seeds"] == "0,1"
    assert row(summary, "kernel_7")["seeds"] == "0,2"


def test_status_per_step(summary):
    statuses = summary.set_index("variant")["status"]
    assert statuses["resnet50"] == "finished"
    assert statuses["modern_recipe"] == "partial"
    assert statuses["kernel_7"] == "partial"
    assert statuses["gelu"] == "failed"
    assert statuses["stage_ratio"] == "missing" and row(summary, "stage_ratio")["n_seeds"] == 0
    assert math.isnan(row(summary, "stage_ratio")["top1_mean"])


def test_delta_is_against_the_parent_step(summary):
    means = summary.set_index("variant")["top1_mean"]
    assert row(summary, "kernel_5")["delta_top1"] == pytest.approx(means["kernel_5"] - means["move_up_dwconv"])
    assert row(summary, "kernel_7")["delta_top1"] == pytest.approx(means["kernel_7"] - means["move_up_dwconv"])
    assert row(summary, "modern_recipe")["delta_top1"] == pytest.approx(means["modern_recipe"] - means["resnet50"])
    assert math.isnan(row(summary, "resnet50")["delta_top1"])        # no parent
    assert math.isnan(row(summary, "patchify_stem")["delta_top1"])   # parent stage_ratio is missing
    assert math.isnan(row(summary, "gelu")["delta_top1"])            # gelu has no finished seed


def test_cost_columns_average_every_run_that_measured_them(summary):
    assert row(summary, "kernel_5")["params"] == COSTS["kernel_5"][0]
    assert row(summary, "kernel_5")["gmacs"] == COSTS["kernel_5"][1]
    assert row(summary, "resnet50")["eval_img_per_s"] == pytest.approx(np.mean([300.0, 302.0]))
    assert row(summary, "kernel_7")["bench_train_img_per_s"] == 55.0
    assert math.isnan(row(summary, "kernel_5")["bench_train_img_per_s"])


def test_paper_columns_equal_the_step_files(summary, study):
    _, roadmap = study
    for step in roadmap.steps:
        got = row(summary, step.name)
        assert got["paper_top1"] == step.paper["top1"]
        assert got["paper_gflops"] == step.paper["gflops"]
        if "top1_std" in step.paper:
            assert got["paper_top1_std"] == step.paper["top1_std"]
        else:
            assert math.isnan(got["paper_top1_std"])
        if step.parent:
            parent_top1 = roadmap.step(step.parent).paper["top1"]
            assert got["paper_delta_top1"] == pytest.approx(step.paper["top1"] - parent_top1)
    assert math.isnan(row(summary, "resnet50")["paper_top1_std"])  # Table 10 gives none for the baseline
    assert row(summary, "kernel_5")["paper_top1"] == 80.35 and row(summary, "kernel_5")["paper_top1_std"] == 0.08
    kernel_5 = row(summary, "kernel_5")
    assert (kernel_5["dataset"], kernel_5["data_kind"], kernel_5["preset"]) == ("synthetic (10 classes)", "synthetic",
                                                                                 "smoke")


def test_written_csv_reads_back_equal_to_the_logged_metrics(summary, tmp_path):
    csv_path, md_path = write_results(summary, tmp_path / "results" / EXPERIMENT, "Table 10")
    assert csv_path == tmp_path / "results" / EXPERIMENT / "roadmap.csv" and md_path.name == "roadmap.md"
    back = read_summary_csv(csv_path)
    pd.testing.assert_frame_equal(back, summary, check_dtype=False)
    assert row(back, "move_up_dwconv")["top1_mean"] == np.mean(finished_top1("move_up_dwconv"))
    assert row(back, "resnet50")["seeds"] == "0,1" and row(back, "modern_recipe")["seeds"] == "0"

    markdown = md_path.read_text()
    assert "multiply-accumulates" in markdown and "synthetic" in markdown and "smoke" in markdown
    assert "Liu et al. 2022, Table 10" in markdown and "top-1 (%, last epoch)" in markdown
    assert "seeds in this table: 0,1,2" in markdown
    mean, std = np.mean(finished_top1("kernel_5")), np.std(finished_top1("kernel_5"), ddof=1)
    assert f"{mean:.2f} ± {std:.2f}" in markdown
    assert "_kernel_5_ (explored)" in markdown and "| missing |" in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) == 1 + len(summary)


def test_read_summary_csv_names_missing_columns(tmp_path, summary):
    path = tmp_path / "roadmap.csv"
    summary.drop(columns=["top1_std", "paper_gflops"]).to_csv(path, index=False)
    with pytest.raises(ResultsError, match="lacks the columns: top1_std, paper_gflops$"):
        read_summary_csv(path)
    with pytest.raises(ResultsError, match="does not exist"):
        read_summary_csv(tmp_path / "nowhere.csv")


def test_study_summary_reads_the_store_and_rejects_unknown_experiments(study, summary, plan, tmp_path):
    uri, _ = study
    pd.testing.assert_frame_equal(study_summary(uri, EXPERIMENT, plan), summary)
    with pytest.raises(TrackingError, match="'no_such_study' does not exist"):
        study_summary(uri, "no_such_study", plan)
    with pytest.raises(TrackingError, match="does not exist"):
        study_summary(f"sqlite:///{tmp_path / 'empty.db'}", EXPERIMENT, plan)


def test_summarize_a_hand_made_table_prefers_completed_then_newest(plan):
    common = {"step": "resnet50", "roadmap": ROADMAP, "config_hash": "hash-resnet50"}
    runs = pd.DataFrame([
        {**common, "seed": 0, "status": "finished", "top1": 70.0},
        {**common, "seed": 0, "status": "failed", "top1": math.nan},
        {**common, "seed": 1, "status": "finished", "top1": 71.0},
        {**common, "seed": 1, "status": "finished", "top1": 72.0},
        # Another configuration of the same variant name, and a seed the plan did not ask for: never mixed in.
        {**common, "config_hash": "3-epochs", "seed": 0, "status": "finished", "top1": 99.0},
        {**common, "seed": 7, "status": "finished", "top1": 98.0},
    ])
    got = row(summarize(runs.reindex(columns=list(RUN_COLUMNS)), plan), "resnet50")
    assert (got["status"], got["seeds"], got["top1_mean"]) == ("finished", "0,1", 71.0)


def test_results_and_tracking_never_import_torch():
    code = ("import sys, roadmap.report.results, roadmap.report.tables, roadmap.tracking; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_the_table_names_the_paper_table_of_its_roadmap(tmp_path):
    for name, table, other in (("resnet50_to_convnext_t", "Table 10", "Table 11"),
                               ("resnet200_to_convnext_b", "Table 11", "Table 10")):
        roadmap = load_roadmap(name)
        summary = summarize(pd.DataFrame(columns=list(RUN_COLUMNS)), plan_with_hashes(name))
        _, md_path = write_results(summary, tmp_path / name, roadmap.paper_table)
        markdown = md_path.read_text()
        assert f"Liu et al. 2022, {table}" in markdown and other not in markdown
        assert roadmap.paper_source == f"paper ({table})"


def test_report_best_summarizes_and_draws_the_best_epochs_top1(study, plan):
    from roadmap.report import plot_data

    uri, _ = study
    runs = load_runs(uri, EXPERIMENT)
    last, best = summarize(runs, plan), summarize(runs, dataclasses.replace(plan, report="best"))
    for name in ("resnet50", "move_up_dwconv", "kernel_5"):
        assert row(best, name)["top1_mean"] == pytest.approx(np.mean(finished_top1(name)) + 1, abs=1e-12)
        assert row(last, name)["top1_mean"] == pytest.approx(np.mean(finished_top1(name)), abs=1e-12)
        assert row(best, name)["top1_best_mean"] == row(last, name)["top1_best_mean"] == row(best, name)["top1_mean"]
    assert set(best["report"]) == {"best"}
    chart = plot_data.roadmap_chart_data(best, plan.roadmap)
    assert chart.rows[0].top1 == row(best, "resnet50")["top1_mean"]
    assert "top-1 of the best epoch" in chart.label.caption
    _, md_path = write_results(best, Path(uri[len("sqlite:///"):]).parent / "best", "Table 10")
    assert "top-1 (%, best epoch)" in md_path.read_text() and "best epoch's" in md_path.read_text()
    with pytest.raises(SpecError, match="report='middle' is not valid; choose one of: last, best"):
        summarize(runs, dataclasses.replace(plan, report="middle"))
