"""Studies as plans, end to end in one experiment: each study reports its own runs only, run settings never retrain,
a leave-one-out study reuses what a cumulative one trained, and the figures are redrawn from the plan."""
from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient

EXPERIMENT = "resnet50_to_convnext_t"
SMOKE = ["--preset", "smoke", "--no-progress"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cli):
    """A 3-seed study of the first two steps, then a 2-epoch 1-seed study of the same steps, in one experiment."""
    folder = tmp_path_factory.mktemp("plans")
    for args in (["--upto", "modern_recipe", "--seeds", "0,1,2"], ["--upto", "modern_recipe", "--epochs", "2"]):
        result = cli(*args, *SMOKE, cwd=folder, env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder


def _client(folder) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def _table(folder, mode: str = "") -> pd.DataFrame:
    return pd.read_csv(folder / "results" / EXPERIMENT / mode / "roadmap.csv").set_index("variant")


def test_a_second_study_in_the_same_experiment_reports_only_its_own_runs(workdir):
    _, runs = _client(workdir)
    steps = [run for run in runs if run.data.tags["run_kind"] == "step"]
    assert len(steps) == 8  # 2 steps x 3 seeds at 1 epoch, 2 steps x 1 seed at 2 epochs
    two_epochs = {run.data.tags["step"]: run.data.metrics["top1"] for run in steps
                  if run.data.metrics.get("top1_best_epoch", 0) >= 1 and "2" == run.data.params["recipe.epochs"]}
    table = _table(workdir)
    assert list(table["seeds"].astype(str)) == ["0", "0"] and list(table["n_seeds"]) == [1, 1]
    for variant in ("resnet50", "modern_recipe"):
        assert table.loc[variant, "top1_mean"] == pytest.approx(two_epochs[variant], abs=1e-9)
        assert pd.isna(table.loc[variant, "top1_std"])
    assert table.loc["modern_recipe", "delta_basis"] == "seed 0 pair, 64 images"
    markdown = (workdir / "results" / EXPERIMENT / "roadmap.md").read_text()
    assert "seeds in this table: 0 (1 seed)." in markdown and "0,1,2" not in markdown


def test_other_workers_train_nothing(workdir, cli):
    result = cli("--upto", "modern_recipe", "--seeds", "0,1,2", "--workers", "1", *SMOKE, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(0 finished, 6 skipped, 0 being trained elsewhere, 0 diverged, 0 failed)" in result.stdout
    table = _table(workdir)
    assert list(table["n_seeds"]) == [3, 3] and set(table["delta_test"].dropna()) == {"welch"}


def test_leave_one_out_reuses_the_runs_a_cumulative_study_trained(workdir, cli):
    result = cli("--ablation", "leave-one-out", "--upto", "stage_ratio", *SMOKE, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # without_stage_ratio is modern_recipe's configuration: its seed-0 run exists already.
    assert "(2 finished, 1 skipped, 0 being trained elsewhere, 0 diverged, 0 failed)" in result.stdout
    table = _table(workdir, "leave-one-out")
    assert list(table.index) == ["stage_ratio", "without_modern_recipe", "without_stage_ratio"]
    assert set(table["baseline"].dropna()) == {"stage_ratio"} and pd.isna(table.loc["stage_ratio", "baseline"])
    finals = table.loc["stage_ratio", "top1_mean"]
    for variant in ("without_modern_recipe", "without_stage_ratio"):
        assert table.loc[variant, "delta_top1"] == pytest.approx(table.loc[variant, "top1_mean"] - finals)
        assert table.loc[variant, "gmacs"] > 0 and table.loc[variant, "params"] > 0
    assert table.loc["without_stage_ratio", "paper_step"] == "modern_recipe"
    figure = workdir / "results" / EXPERIMENT / "leave-one-out" / "leave_one_out.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client, runs = _client(workdir)
    parent = next(run for run in runs if run.data.tags.get("ablation") == "leave-one-out"
                  and run.data.tags["run_kind"] == "study")
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"plan.json", "roadmap.csv", "roadmap.md", "leave_one_out.png"} <= artifacts


def test_plot_roadmap_draws_the_newest_study_and_any_other_on_request(workdir, cli):
    newest = cli("plot_roadmap.py", "--out", str(workdir / "newest"), "--format", "png", cwd=workdir)
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout.startswith("drawing study ") and "leave-one-out up to stage_ratio" in newest.stdout
    assert (workdir / "newest" / "leave_one_out.png").exists()
    _, runs = _client(workdir)
    first = min((run for run in runs if run.data.tags["run_kind"] == "study"), key=lambda run: run.info.start_time)
    older = cli("plot_roadmap.py", "--study-run", first.info.run_id, "--out", str(workdir / "first"), "--format",
                "png", cwd=workdir)
    assert older.returncode == 0, older.stderr
    assert f"drawing study {first.info.run_id} (resnet50_to_convnext_t, cumulative up to modern_recipe, 2 variants, " \
           "seeds 0,1,2" in older.stdout
    assert (workdir / "first" / "roadmap.png").exists()
    wrong = cli("plot_roadmap.py", "--study-run", "nope", cwd=workdir)
    assert wrong.returncode == 2 and "--study-run 'nope' is not a study of experiment" in wrong.stderr


def test_runs_of_an_earlier_version_are_named_not_reused(tmp_path, cli):
    from roadmap.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", EXPERIMENT, system_metrics=False)
    with tracker.step_run("resnet50", 0, "old-hash", params={}, tags={"roadmap": EXPERIMENT}, config={}) as run:
        run.log_final({"top1": 50.0}, "finished")
    result = cli("--upto", "resnet50", *SMOKE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("note: 1 run(s) of resnet50_to_convnext_t in experiment 'resnet50_to_convnext_t' come from an earlier "
            "version of convnext-roadmap") in result.stdout
    assert "(1 finished, 0 skipped" in result.stdout and _table(tmp_path).loc["resnet50", "top1_mean"] != 50.0
