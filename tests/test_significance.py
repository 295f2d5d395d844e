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
    table = pd.read_csv(workdir / "results" / "resnet50_to_convnext_t" / "roadmap.csv").set_index("variant")
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


def test_with_unequal_seeds_delta_its_interval_and_p_all_come_from_one_seed_pair():
    """2 seeds against 1: Welch is impossible, so Δ is the common seed's pair, as its interval and p are (before,
    Δ was the difference of the means of {0, 1} and {0}, and could fall outside its own interval)."""
    import numpy as np

    from roadmap.predictions import Predictions
    from roadmap.report.significance import compare

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)

    def predictions(accuracy: float, seed: int) -> Predictions:
        right = np.random.default_rng(seed).random(400) < accuracy
        top_k = np.where(right, labels, (labels + 1) % 10)[:, None].repeat(5, 1)
        return Predictions(index=np.arange(400), label=labels, top_k=top_k)

    runs = {"a0": predictions(0.50, 1), "a1": predictions(0.90, 2), "b0": predictions(0.55, 3)}
    step = pd.DataFrame({"run_id": ["a0", "a1"], "seed": [0, 1], "status": "finished",
                         "top1": [runs["a0"].top1(), runs["a1"].top1()]})
    parent = pd.DataFrame({"run_id": ["b0"], "seed": [0], "status": "finished", "top1": [runs["b0"].top1()]})
    delta = compare(step, parent, "top1", runs.get)
    assert delta.test == "mcnemar" and delta.basis == "seed 0 pair, 400 images"
    assert delta.delta == pytest.approx(runs["a0"].top1() - runs["b0"].top1(), abs=1e-9)
    assert delta.ci_low <= delta.delta <= delta.ci_high
    means = step["top1"].mean() - parent["top1"].mean()
    assert not delta.ci_low <= means <= delta.ci_high  # the old Δ lay outside the interval it was reported with
    without_predictions = compare(step, parent, "top1", None)
    assert without_predictions.delta == pytest.approx(means) and without_predictions.test == ""
    assert without_predictions.basis == "means over seeds 0,1 vs 0, no interval"
