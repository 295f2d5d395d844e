"""Is a step's Δ real? A three-seed smoke study's Welch intervals, recomputed from the runs in MLflow with scipy."""
from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from roadmap import load_roadmap

UPTO = "stage_ratio"


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory, cli):
    workdir = tmp_path_factory.mktemp("seeds")
    result = cli("--upto", UPTO, "--preset", "smoke", "--seeds", "0,1,2", "--no-progress", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


def per_seed_top1(workdir) -> dict[str, dict[int, float]]:
    """Each step's top-1 per seed, as MLflow holds it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("resnet50_to_convnext_t")
    values: dict[str, dict[int, float]] = {}
    for run in client.search_runs([experiment.experiment_id], "tags.run_kind = 'step'"):
        values.setdefault(run.data.tags["step"], {})[int(run.data.tags["seed"])] = run.data.metrics["top1"]
    return values


def test_every_delta_is_welchs_over_the_seeds_in_mlflow(three_seeds):
    workdir, _ = three_seeds
    table = pd.read_csv(workdir / "results" / "resnet50_to_convnext_t" / "roadmap.csv").set_index("step")
    top1 = per_seed_top1(workdir)
    assert all(len(seeds) == 3 for seeds in top1.values())
    for step in load_roadmap("resnet50_to_convnext_t").upto(UPTO)[1:]:
        ours, theirs = list(top1[step.name].values()), list(top1[step.parent].values())
        welch = stats.ttest_ind(ours, theirs, equal_var=False)
        interval = welch.confidence_interval(confidence_level=0.95)
        row = table.loc[step.name]
        assert row["delta_test"] == "welch"
        assert row["delta_top1"] == pytest.approx(sum(ours) / 3 - sum(theirs) / 3, abs=1e-9)
        assert row["delta_ci_low"] == pytest.approx(interval.low, abs=1e-9)
        assert row["delta_ci_high"] == pytest.approx(interval.high, abs=1e-9)
        assert row["delta_p"] == pytest.approx(welch.pvalue, abs=1e-9)
        # The step's own 95 % interval: Student's t over its three seeds.
        low, high = stats.t.interval(0.95, 2, loc=sum(ours) / 3, scale=stats.sem(ours))
        assert (row["top1_ci_low"], row["top1_ci_high"]) == pytest.approx((low, high), abs=1e-9)


def test_the_table_and_the_study_say_which_test_and_how_the_trend_agrees(three_seeds):
    workdir, result = three_seeds
    markdown = (workdir / "results" / "resnet50_to_convnext_t" / "roadmap.md").read_text()
    assert "| welch |" in markdown and "Welch's t-test and interval over the seeds' top-1" in markdown
    summary = pd.read_csv(workdir / "results" / "resnet50_to_convnext_t" / "roadmap.csv")
    rho = stats.spearmanr(summary["top1_mean"], summary["paper_top1"]).statistic
    line = next(line for line in result.stdout.splitlines() if line.startswith("agreement with the paper"))
    assert line.startswith(f"agreement with the paper (Table 10): Spearman rank correlation {rho:.2f}")
    assert line in markdown
