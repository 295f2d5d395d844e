"""End to end, as a user runs it: a smoke study trained, tracked in MLflow, tabled, plotted, and rerun."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from roadmap import load_roadmap

SMOKE_UPTO = "bn_to_ln"
EPOCH_METRICS = {"train_loss", "lr", "val_top1", "val_top5", "train_img_per_s"}
FINAL_METRICS = {"top1", "top5", "top1_best", "top1_best_epoch", "params", "gmacs", "train_img_per_s", "eval_img_per_s",
                 "peak_process_rss_mib", "wall_time_s"}
STEP_TAGS = {"step", "order", "group", "adopted", "baseline", "ablation", "hash_version", "seed", "config_hash",
             "git_revision",
             "torch_version", "torchvision_version", "timm_version", "device", "roadmap", "dataset", "data_kind",
             "preset", "delta_test"}
STEP_ARTIFACTS = {"config.json", "weights.safetensors", "predictions.csv", "predictions_best.csv"}
STUDY_ARTIFACTS = {"plan.json", "roadmap.csv", "roadmap.md", "roadmap.png", "roadmap.svg", "accuracy_vs_gmacs.png",
                   "accuracy_vs_gmacs.svg", "accuracy_vs_throughput.png", "accuracy_vs_throughput.svg"}


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory, cli):
    """`run_ablation.py --upto bn_to_ln --preset smoke` in a fresh directory, once for this module."""
    workdir = tmp_path_factory.mktemp("study")
    # One torch thread, as this test process runs: the tests below recompute the runs' numbers exactly.
    result = cli("--upto", SMOKE_UPTO, "--preset", "smoke", "--no-progress", cwd=workdir, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


def _client(workdir):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")


def _runs(workdir):
    client = _client(workdir)
    experiment = client.get_experiment_by_name("resnet50_to_convnext_t")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def test_smoke_study_trains_all_16_steps(smoke_study):
    workdir, result = smoke_study
    names = load_roadmap("resnet50_to_convnext_t").names()
    expected = names[: names.index(SMOKE_UPTO) + 1]
    assert len(expected) == 16
    for index, name in enumerate(expected, start=1):
        assert f"[{index}/16] {name} seed 0: top-1 " in result.stdout
    assert "(16 finished, 0 skipped, 0 being trained elsewhere, 0 diverged, 0 failed)" in result.stdout
    split = re.search(r"time split over 16 trained run\(s\): training loops ([\d.]+) s, of which waiting for data "
                      r"([\d.]+) s \(\+[\d.]+ % on the model steps' [\d.]+ s\); evaluation, checkpoints and MLflow "
                      r"logging ([\d.]+) s", result.stdout)
    assert split and 0 < float(split[2]) < float(split[1]) and float(split[3]) > 0


def test_mlflow_holds_one_parent_and_a_nested_run_per_step(smoke_study):
    workdir, _ = smoke_study
    client, runs = _runs(workdir)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    steps = [r for r in runs if r.data.tags.get("run_kind") == "step"]
    assert len(parents) == 1 and len(steps) == 16
    parent_id = parents[0].info.run_id
    assert {a.path for a in client.list_artifacts(parent_id)} == STUDY_ARTIFACTS
    for run in steps:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.info.run_name == f"{run.data.tags['step']} seed 0"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == STEP_ARTIFACTS
        contexts = {(i.dataset.name, tag.value) for i in run.inputs.dataset_inputs for tag in i.tags}
        assert contexts == {("synthetic-train", "training"), ("synthetic-val", "validation")}
        assert run.data.tags["data_kind"] == "synthetic"
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        assert STEP_TAGS <= set(run.data.tags)
        assert FINAL_METRICS | EPOCH_METRICS <= set(run.data.metrics)
        assert run.data.params["arch.kernel_size"] in {"3", "5", "7", "9", "11"}
        assert {"recipe.optimizer", "data.source", "preset", "arch.width_multiplier"} <= set(run.data.params)
        assert "synthetic" in run.data.tags["dataset"]
        history = client.get_metric_history(run.info.run_id, "val_top1")
        assert [m.step for m in history] == [1]
    kernel_5 = next(r for r in steps if r.data.tags["step"] == "kernel_5")
    assert kernel_5.data.tags["adopted"] == "False" and kernel_5.data.tags["baseline"] == "move_up_dwconv"
    config = json.loads((workdir / "mlruns").rglob("config.json").__next__().read_text())
    assert {"arch", "recipe", "data", "preset", "step", "variant", "hash_version", "batch_split"} <= set(config)


def test_results_csv_holds_exactly_the_runs_numbers(smoke_study):
    workdir, _ = smoke_study
    _, runs = _runs(workdir)
    table = pd.read_csv(workdir / "results" / "resnet50_to_convnext_t" / "roadmap.csv")
    assert (workdir / "results" / "resnet50_to_convnext_t" / "roadmap.md").read_text().count("| finished |") == 16
    by_step = {r.data.tags["step"]: r.data.metrics for r in runs if r.data.tags.get("run_kind") == "step"}
    names = load_roadmap("resnet50_to_convnext_t").names()
    assert list(table["variant"]) == names[: names.index(SMOKE_UPTO) + 1]  # roadmap order
    for row in table.itertuples():
        metrics = by_step[row.step]
        assert row.top1_mean == pytest.approx(metrics["top1"], abs=1e-9)
        assert row.top5_mean == pytest.approx(metrics["top5"], abs=1e-9)
        assert row.params == metrics["params"] and row.gmacs == pytest.approx(metrics["gmacs"])
        assert math.isnan(row.top1_std)  # one seed
        step = load_roadmap("resnet50_to_convnext_t").step(row.step)
        assert row.paper_top1 == step.paper["top1"] and row.paper_gflops == step.paper["gflops"]


def test_rerunning_the_same_command_creates_no_new_step_runs(smoke_study, cli):
    workdir, _ = smoke_study
    _, before = _runs(workdir)
    result = cli("--upto", SMOKE_UPTO, "--preset", "smoke", "--no-progress", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "(0 finished, 16 skipped," in result.stdout and "time split" not in result.stdout
    _, after = _runs(workdir)
    steps_before = {r.info.run_id for r in before if r.data.tags.get("run_kind") == "step"}
    steps_after = {r.info.run_id for r in after if r.data.tags.get("run_kind") == "step"}
    assert steps_after == steps_before


def test_plot_draws_the_studys_own_figures_from_its_runs(smoke_study, cli):
    """One drawing path: plot_roadmap.py redraws, from the same runs, exactly what the study drew at its end."""
    workdir, _ = smoke_study
    out = workdir / "figures"
    result = cli("plot_roadmap.py", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--out", str(out), cwd=workdir)
    assert result.returncode == 0, result.stderr
    study_folder = workdir / "results" / "resnet50_to_convnext_t"
    for stem in ("roadmap", "accuracy_vs_gmacs", "accuracy_vs_throughput"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.png").read_bytes() == (study_folder / f"{stem}.png").read_bytes(), stem


def test_a_tracking_server_that_stays_down_is_waited_for_then_exit_1_before_training(tmp_path, cli):
    """Down is not a bad input: the study waits (one line says so), then stops with exit code 1, trains nothing."""
    result = cli("--upto", "resnet50", "--preset", "smoke", "--tracking-uri", "http://127.0.0.1:9",
                 "--tracking-patience-min", "0.05", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "tracking server http://127.0.0.1:9 unreachable (Connection refused); retrying for up to 3 s"
    assert lines[-1].startswith("error: tracking server http://127.0.0.1:9 still unreachable after 3 s")
    assert len(lines) == 2 and not (tmp_path / "checkpoints").exists()


def test_malformed_tracking_uri_fails_before_training(tmp_path, cli):
    result = cli("--upto", "resnet50", "--preset", "smoke", "--tracking-uri", "postgres-ish:/nowhere", cwd=tmp_path)
    assert result.returncode == 2 and "postgres-ish:/nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists()


def test_benchmark_records_every_step_in_the_results_table(tmp_path, cli):
    result = cli("--benchmark", "--upto", "stage_ratio", "--preset", "smoke", "--bench-batch-size", "4",
                 "--bench-repeats", "1", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Throughput in img/s on cpu" in result.stdout and "batch 4, 32x32 px, fp32" in result.stdout
    table = pd.read_csv(tmp_path / "results" / "resnet50_to_convnext_t" / "roadmap.csv")
    assert list(table["variant"]) == ["resnet50", "modern_recipe", "stage_ratio"]
    assert (table["bench_train_img_per_s"] > 0).all() and (table["bench_eval_img_per_s"] > 0).all()
    assert (table["status"] == "missing").all()  # measured, not trained


def test_the_last_lines_say_where_the_study_is(smoke_study):
    workdir, result = smoke_study
    client, runs = _runs(workdir)
    experiment_id = client.get_experiment_by_name("resnet50_to_convnext_t").experiment_id
    lines = result.stdout.strip().splitlines()
    starts = {prefix: next(i for i, line in enumerate(lines) if line.startswith(prefix))
              for prefix in ("agreement with the paper (Table 10): ", "full table: ", "figures in ", "in MLflow")}
    assert list(starts.values()) == sorted(starts.values())  # in this order, at the end
    assert lines[starts["full table: "]] == ("full table: results/resnet50_to_convnext_t/roadmap.md (and roadmap.csv "
                                             "beside it)")
    figures = " ".join(lines[starts["figures in "]:starts["in MLflow"]]).replace("   ", " ")
    assert figures == ("figures in results/resnet50_to_convnext_t/ (.png, .svg): roadmap, accuracy_vs_gmacs, "
                       "accuracy_vs_throughput")
    last = lines[starts["in MLflow"]:]
    assert last[0] == "in MLflow (start the UI with: mlflow ui --backend-store-uri sqlite:///mlflow.db):"
    assert last[1].endswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                            "&viewStateShareKey=roadmap-step-runs")
    parent = next(r for r in runs if r.data.tags.get("run_kind") == "study" and r.info.run_id in last[2])
    assert last[2].endswith(f"/#/experiments/{experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning")
    # Everything above the links fits an ordinary terminal (the links cannot).
    table = next(i for i, line in enumerate(lines) if line.startswith(" #  variant"))
    assert max(len(line) for line in lines[table - 3:starts["in MLflow"] + 1]) <= 100
    # The parent run links each variant's runs, in the model-training view.
    links = parent.data.tags["mlflow.note.content"]
    step = next(r for r in runs if r.data.tags.get("run_kind") == "step" and r.data.tags.get("step") == "kernel_7")
    assert f"[seed 0](#/experiments/{experiment_id}/runs/{step.info.run_id}?workflowType=machine_learning)" in links
    description = client.get_experiment(experiment_id).tags["mlflow.note.content"]
    assert "Compare" in description and "weights.safetensors" in description


def test_a_roadmap_from_steps_dir_is_summarized_against_its_own_steps(tmp_path, cli):
    """A study of a roadmap outside steps/ writes its own steps' table and figures, with MLflow and a CSV."""
    from roadmap.steps import DEFAULT_STEPS_DIR

    mine = tmp_path / "roadmaps" / "mine"
    mine.mkdir(parents=True)
    for name in ("00_resnet50.toml", "01_modern_recipe.toml"):
        (mine / name).write_text((DEFAULT_STEPS_DIR / "resnet50_to_convnext_t" / name).read_text())
    (mine / "02_wider_stem.toml").write_text(
        'name = "wider_stem"\ngroup = "my idea"\nadopted = true\n[arch]\nbase_width = 96\n')
    result = cli("--steps-dir", str(tmp_path / "roadmaps"), "--roadmap", "mine", "--preset", "smoke", "--no-progress",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = pd.read_csv(tmp_path / "results" / "mine" / "roadmap.csv")
    assert list(table["variant"]) == ["resnet50", "modern_recipe", "wider_stem"]
    assert list(table["status"]) == ["finished"] * 3 and (tmp_path / "results" / "mine" / "roadmap.png").exists()
    redrawn = cli("plot_roadmap.py", "--steps-dir", str(tmp_path / "roadmaps"), "--roadmap", "mine", "--out",
                  str(tmp_path / "again"), cwd=tmp_path)
    assert redrawn.returncode == 0, redrawn.stderr
    assert (tmp_path / "again" / "roadmap.png").exists()


def test_one_seed_deltas_are_mcnemar_and_bootstrap_over_the_stored_predictions(smoke_study, tmp_path):
    """Each Δ of a one-seed study is tested on the images of the step's and its parent's runs (their artifacts)."""
    from scipy import stats

    from roadmap.predictions import read_predictions

    workdir, _ = smoke_study
    client, runs = _runs(workdir)
    by_step = {r.data.tags["step"]: r for r in runs if r.data.tags.get("run_kind") == "step"}
    table = pd.read_csv(workdir / "results" / "resnet50_to_convnext_t" / "roadmap.csv").set_index("variant")

    def correct(step: str):
        path = client.download_artifacts(by_step[step].info.run_id, "predictions.csv", str(tmp_path / step))
        predictions = read_predictions(path)
        assert predictions.top1() == pytest.approx(by_step[step].data.metrics["top1"], abs=1e-9)
        return predictions.top_k[:, 0] == predictions.label

    for step in load_roadmap("resnet50_to_convnext_t").upto(SMOKE_UPTO)[1:]:
        row = table.loc[step.name]
        ours, theirs = correct(step.name), correct(step.parent)
        b, c = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
        expected_p = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        assert row["delta_test"] == "mcnemar"
        assert row["delta_p"] == pytest.approx(expected_p, abs=1e-9), step.name
        assert row["delta_top1"] == pytest.approx(100 * (ours.mean() - theirs.mean()), abs=1e-9)
        assert row["delta_ci_low"] <= row["delta_top1"] <= row["delta_ci_high"]
        # A paired bootstrap interval is about as wide as the normal approximation of the paired difference.
        n, plus, minus = len(ours), b / len(ours), c / len(ours)
        normal = 2 * 1.96 * 100 * ((plus + minus - (plus - minus) ** 2) / n) ** 0.5
        assert row["delta_ci_high"] - row["delta_ci_low"] == pytest.approx(normal, rel=0.35, abs=1.0)
        # The same numbers are logged on the step's run.
        metrics = by_step[step.name].data.metrics
        assert metrics["delta_p"] == pytest.approx(row["delta_p"]) and by_step[step.name].data.tags[
            "delta_test"] == "mcnemar"


def test_a_trained_network_loads_from_its_run_with_its_logged_top1(smoke_study):
    """roadmap.load_trained("runs:/<id>") gives the network; evaluated again here it scores the run's top-1."""
    import roadmap
    from roadmap.data import build_datasets, build_loaders
    from roadmap.spec import DataSpec, RecipeSpec
    from roadmap.training.engine import TrainOptions, evaluate

    workdir, _ = smoke_study
    client, runs = _runs(workdir)
    run = next(r for r in runs if r.data.tags.get("step") == "kernel_7")
    trained = roadmap.load_trained(f"runs:/{run.info.run_id}", tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    assert not trained.model.training and trained.step == "kernel_7"
    assert trained.top1 == run.data.metrics["top1"]
    (workdir / "config").mkdir(exist_ok=True)
    config_path = client.download_artifacts(run.info.run_id, "config.json", str(workdir / "config"))
    config = json.loads(Path(config_path).read_text())
    data = DataSpec(**config["data"])
    recipe = RecipeSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["recipe"].items()})
    _, val_loader = build_loaders(build_datasets(data, recipe), 32, workers=0, seed=0)
    scores = evaluate(trained.model, val_loader, num_classes=trained.num_classes,
                      options=TrainOptions(checkpoint_dir=workdir / "unused"))
    assert scores.top1 == pytest.approx(run.data.metrics["top1"], abs=1e-9)
