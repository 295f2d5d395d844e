"""A study on a real SLURM cluster (tools/slurm/start_cluster.sh starts one on this machine).

Every test here submits real jobs. They skip when no cluster answers, except where the environment says one
is required (ROADMAP_REQUIRE_SLURM=1, set by .ci/run): there a missing cluster fails them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from roadmap.training.result import TrainResult

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
# One CPU per job on the 2-core test machine: two jobs at a time.
SLURM = ["--launcher", "slurm", "--cpus-per-task", "1", "--timeout-min", "30", "--no-progress"]
FAST_POLL = {"ROADMAP_POLL_S": "1"}


def _cluster_answers() -> str:
    """"" when a cluster answers, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM commands on PATH"
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if probe.returncode != 0 or not probe.stdout.strip():
        return f"sinfo failed: {probe.stderr.strip()[:200]}"
    return ""


@pytest.fixture(scope="module", autouse=True)
def cluster():
    reason = _cluster_answers()
    if reason:
        if os.environ.get("ROADMAP_REQUIRE_SLURM") == "1":
            pytest.fail(f"a SLURM cluster is required (ROADMAP_REQUIRE_SLURM=1) but {reason}")
        pytest.skip(f"no SLURM cluster reachable ({reason}); start one with tools/slurm/start_cluster.sh")


def _step_runs(workdir: Path, experiment: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], max_results=1000)


def _sacct_job_count() -> int:
    return len(subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True).stdout.split())


def test_a_smoke_study_through_slurm_and_a_rerun_that_submits_nothing(tmp_path, cli):
    args = ["--upto", "stage_ratio", "--preset", "smoke", "--seeds", "0,1", *SLURM]
    result = cli(*args, cwd=tmp_path, env=FAST_POLL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted 6 job(s) as SLURM array" in result.stdout
    assert "warning: tracking store" in result.stderr  # a SQLite file with a cluster launch: one line
    client, runs = _step_runs(tmp_path, "resnet50_to_convnext_t")
    parents = [run for run in runs if run.data.tags["run_kind"] == "study"]
    steps = [run for run in runs if run.data.tags["run_kind"] == "step"]
    assert len(parents) == 1 and len(steps) == 6
    assert all(run.info.status == "FINISHED" and run.data.tags["status"] == "finished" for run in steps)
    assert {run.data.tags["mlflow.parentRunId"] for run in steps} == {parents[0].info.run_id}
    assert sorted((run.data.tags["step"], run.data.tags["seed"]) for run in steps) == sorted(
        (step, seed) for step in ("resnet50", "modern_recipe", "stage_ratio") for seed in "01")
    table = (tmp_path / "results" / "resnet50_to_convnext_t" / "roadmap.csv").read_text()
    assert table.count(",finished,") == 3

    jobs_before = _sacct_job_count()
    again = cli(*args, cwd=tmp_path, env=FAST_POLL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6 run(s) already finished, 0 job(s) queued or running, 0 to submit" in again.stdout
    assert "submitted" not in again.stdout and _sacct_job_count() == jobs_before
    assert {run.info.run_id for run in _step_runs(tmp_path, "resnet50_to_convnext_t")[1]} == {
        run.info.run_id for run in runs}


def test_no_wait_returns_and_the_same_command_re_attaches(tmp_path, cli):
    args = ["--upto", "modern_recipe", "--preset", "smoke", "--epochs", "40", *SLURM]
    submitted = cli(*args, "--no-wait", cwd=tmp_path, env=FAST_POLL)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    assert "submitted 2 job(s)" in submitted.stdout and "not waiting (--no-wait)" in submitted.stdout
    record = json.loads((tmp_path / "checkpoints" / "resnet50_to_convnext_t" / "_launch" / "launch.json").read_text())
    assert len(record["jobs"]) == 2
    attached = cli(*args, cwd=tmp_path, env=FAST_POLL)
    assert attached.returncode == 0, attached.stdout[-2000:] + attached.stderr[-2000:]
    assert "0 to submit" in attached.stdout and "submitted" not in attached.stdout
    assert "2 job(s) queued or running" in attached.stdout  # still running when it re-attached
    _, runs = _step_runs(tmp_path, "resnet50_to_convnext_t")
    steps = [run for run in runs if run.data.tags["run_kind"] == "step"]
    assert len(steps) == 2 and all(run.info.status == "FINISHED" for run in steps)
    parents = {run.info.run_id for run in runs if run.data.tags["run_kind"] == "study"}
    assert len(parents) == 1 and {run.data.tags["mlflow.parentRunId"] for run in steps} == parents


def _wait_for_checkpoint(folder: Path, epoch: int, timeout: float = 120) -> Path:
    import torch

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in folder.rglob("last.pt"):
            try:
                if torch.load(path, map_location="cpu", weights_only=False)["epoch"] >= epoch:
                    return path
            except Exception:  # noqa: BLE001 - being replaced while read: try again
                pass
        time.sleep(0.2)
    pytest.fail(f"no checkpoint of epoch {epoch} under {folder} within {timeout} s")


# Long enough that the interruption lands mid-step.
REQUEUE_ARGS = ["--upto", "resnet50", "--preset", "smoke", "--epochs", "100"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli) -> TrainResult:
    """The same step trained inline on 1 thread, as the jobs train (--cpus-per-task 1): CPU kernels are exact then."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    inline = cli(*REQUEUE_ARGS, "--no-progress", cwd=folder, env={"OMP_NUM_THREADS": "1"})
    assert inline.returncode == 0, inline.stderr[-2000:]
    (final,) = (folder / "checkpoints").rglob("final.json")
    return TrainResult.from_json(json.loads(final.read_text()))


@pytest.mark.parametrize("interruption", [
    # What an admin or a preemption without warning does: SIGTERM, then SIGKILL after KillWait; SLURM requeues.
    ["scontrol", "requeue"],
    # SLURM's warning signal before a time limit or a preemption: submitit calls StudyJob.checkpoint and requeues.
    ["scancel", "--signal=USR2"],
], ids=["scontrol-requeue", "usr2-checkpoint-hook"])
def test_an_interrupted_job_resumes_from_its_checkpoint_with_the_uninterrupted_metrics(tmp_path, cli, uninterrupted,
                                                                                      interruption):
    submitted = cli(*REQUEUE_ARGS, *SLURM, "--no-wait", cwd=tmp_path, env=FAST_POLL)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    (job_id,) = [job["job_id"] for job in json.loads(
        (tmp_path / "checkpoints" / "resnet50_to_convnext_t" / "_launch" / "launch.json").read_text())["jobs"].values()]
    _wait_for_checkpoint(tmp_path / "checkpoints", epoch=3)
    subprocess.run([*interruption, job_id], check=True, timeout=60)
    attached = cli(*REQUEUE_ARGS, *SLURM, cwd=tmp_path, env=FAST_POLL)
    assert attached.returncode == 0, attached.stdout[-3000:] + attached.stderr[-3000:]

    (final,) = (tmp_path / "checkpoints").rglob("final.json")
    resumed = TrainResult.from_json(json.loads(final.read_text()))
    assert 1 <= resumed.resumed_from_epoch < 100, "the job was not interrupted mid-step"
    for key in ("top1", "top5", "top1_best", "train_loss"):
        assert getattr(resumed, key) == getattr(uninterrupted, key), key
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in uninterrupted.history]
    client, runs = _step_runs(tmp_path, "resnet50_to_convnext_t")
    (step,) = [run for run in runs if run.data.tags["run_kind"] == "step"]
    assert step.info.status == "FINISHED" and step.data.tags["attempts"] == "2"
    assert sorted(m.step for m in client.get_metric_history(step.info.run_id, "val_top1")) == list(range(1, 101))


def test_a_failing_job_is_named_with_its_error_and_log_and_a_rerun_resubmits_only_it(tmp_path, cli):
    from roadmap import load_roadmap
    from roadmap.cli.ablation import main

    args = ["--upto", "modern_recipe", "--preset", "smoke", *SLURM]
    # A damaged checkpoint makes the modern_recipe job fail when it tries to resume from it.
    context = main.make_context("run_ablation.py", list(args))
    from roadmap.cli.ablation import build_study
    from roadmap.schema import checkpoint_folder

    study = build_study(load_roadmap("resnet50_to_convnext_t"), context.params)
    modern = study.plan.variant("modern_recipe")
    broken = tmp_path / checkpoint_folder(study.checkpoint_dir, study.experiment, modern.config_hash, 0) / "last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")

    failed = cli(*args, cwd=tmp_path, env=FAST_POLL)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    lines = [line for line in failed.stderr.splitlines() if line.startswith("FAILED modern_recipe seed 0: ")]
    assert len(lines) == 1 and "log " in lines[0] and "_log.err" in lines[0]
    assert "pickle" in lines[0].lower() or "load" in lines[0].lower()  # the job's own last error line
    assert "failed variants: modern_recipe; " in failed.stderr
    assert Path(lines[0].rsplit("log ", 1)[1].rstrip(")")).is_file()

    broken.unlink()
    rerun = cli(*args, cwd=tmp_path, env=FAST_POLL)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "1 run(s) already finished, 0 job(s) queued or running, 1 to submit" in rerun.stdout


def test_a_two_task_job_trains_one_step_with_ddp_over_gloo(tmp_path, cli):
    result = cli("--upto", "resnet50", "--preset", "smoke", "--gpus-per-node", "2", "--device", "cpu", *SLURM,
                 cwd=tmp_path, env=FAST_POLL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) per job" in result.stdout
    (log,) = (tmp_path / "checkpoints").rglob("*_0_log.out")
    assert "batch 32 (16 x 1 accumulation x 2 processes), BatchNorm batch 16" in log.read_text()
    _, runs = _step_runs(tmp_path, "resnet50_to_convnext_t")
    (step,) = [run for run in runs if run.data.tags["run_kind"] == "step"]
    assert step.info.status == "FINISHED" and step.data.tags["device"] == "cpu x2"


def test_a_leave_one_out_study_through_slurm(tmp_path, cli):
    """The final model at stage_ratio and the model without each of its two steps, as one job array."""
    args = ["--ablation", "leave-one-out", "--upto", "stage_ratio", "--preset", "smoke", *SLURM]
    result = cli(*args, cwd=tmp_path, env=FAST_POLL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted 3 job(s) as SLURM array" in result.stdout
    client, runs = _step_runs(tmp_path, "resnet50_to_convnext_t")
    (parent,) = [run for run in runs if run.data.tags["run_kind"] == "study"]
    assert parent.data.tags["ablation"] == "leave-one-out"
    steps = sorted(run.data.tags["step"] for run in runs if run.data.tags["run_kind"] == "step")
    assert steps == ["stage_ratio", "without_modern_recipe", "without_stage_ratio"]
    folder = tmp_path / "results" / "resnet50_to_convnext_t" / "leave-one-out"
    table = (folder / "roadmap.csv").read_text()
    assert table.count(",finished,") == 3 and (folder / "leave_one_out.png").exists()
    assert "plan.json" in {item.path for item in client.list_artifacts(parent.info.run_id)}
