"""Launching a study as jobs: the checks before anything is submitted, the live table, and local jobs."""
from __future__ import annotations

import os
import re
import sys
from datetime import datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from roadmap.study.executors.slurm import _expand, _table_state
from roadmap.study.progress_table import ProgressTable, Row


@pytest.mark.parametrize(("args", "message"), [
    (["--launcher", "kubernetes"], "'kubernetes' is not one of 'inline', 'local', 'slurm'"),
    (["--launcher", "slurm", "--nodes", "0"], "--nodes=0 is not valid; a whole number >= 1"),
    (["--launcher", "local", "--gpus-per-node", "-1"], "--gpus-per-node=-1 is not valid; a whole number >= 1"),
    (["--launcher", "slurm", "--timeout-min", "0"], "--timeout-min=0 is not valid; a whole number >= 1"),
    (["--launcher", "local", "--max-parallel", "0"], "--max-parallel=0 is not valid; a whole number >= 1"),
    (["--launcher", "slurm", "--mem-gb", "0"], "--mem-gb=0 is not valid; a whole number >= 1"),
    (["--launcher", "slurm", "--slurm-option", "qos"], "--slurm-option='qos' is not valid; write KEY=VALUE"),
    (["--nodes", "2"], "--nodes applies to --launcher local or slurm, not inline"),
    (["--no-wait"], "--no-wait applies to --launcher local or slurm, not inline"),
    (["--launcher", "local", "--no-wait"], "--no-wait needs --launcher slurm"),
    (["--launcher", "local", "--nodes", "2"], "--nodes=2 is not valid with --launcher local"),
    (["--launcher", "local", "--slurm-partition", "gpu"], "--slurm-partition applies to --launcher slurm, not local"),
    (["--launcher", "local", "--checkpoint-dir", "/etc/hostname/checkpoints"], "--checkpoint-dir /etc/hostname/"
                                                                                 "checkpoints cannot be written"),
])
def test_bad_launches_are_refused_before_anything_is_submitted(tmp_path, cli, args, message):
    result = cli("--upto", "resnet50", "--preset", "smoke", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-1000:] + result.stderr[-1000:]
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("launch.json"))


def test_slurm_without_sbatch_is_refused_in_one_line(tmp_path, cli):
    # Only this interpreter's folder on PATH: no sbatch, squeue or sacct.
    result = cli("--upto", "resnet50", "--preset", "smoke", "--launcher", "slurm", cwd=tmp_path,
                 env={"PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 2
    assert result.stderr.startswith("error: --launcher slurm needs SLURM's sbatch, squeue, sacct on PATH")
    assert len(result.stderr.strip().splitlines()) == 1


def test_dry_run_plans_the_processes_of_a_slurm_job(tmp_path, cli):
    # --dry-run needs no cluster to show how a job of 1 node x 8 GPUs would split the paper's batches.
    import json

    result = cli("--dry-run", "--json", "--preset", "paper", "--data", f"imagefolder:{tree(tmp_path)}",
                 "--device", "cpu", "--upto", "modern_recipe", "--gpus-per-node", "8", "--launcher", "local",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["variant"]: row for row in json.loads(result.stdout)["variants"]}
    assert (rows["resnet50"]["processes"], rows["resnet50"]["bn_batch"], rows["resnet50"]["micro_batch"],
            rows["resnet50"]["accumulation_steps"]) == (8, 32, 32, 1)
    assert (rows["modern_recipe"]["bn_batch"], rows["modern_recipe"]["accumulation_steps"]) == (128, 4)


def tree(root: Path) -> Path:
    """A tiny ImageFolder tree (2 classes, a PNG each in train/ and val/)."""
    from PIL import Image

    for split in ("train", "val"):
        for name in ("cat", "dog"):
            folder = root / "data" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (10, 200, 30)).save(folder / "0.png")
    return root / "data"


def test_slurm_states_and_array_ids_are_read_as_the_table_shows_them():
    assert _expand("123_[0-2,5%2]") == ["123_0", "123_1", "123_2", "123_5"]
    assert _expand("123_4") == ["123_4"] and _expand("77") == ["77"]
    assert [_table_state(state, restarts) for state, restarts in (
        ("PENDING", 0), ("PENDING", 1), ("RUNNING", 1), ("REQUEUED", 0), ("COMPLETED", 0), ("TIMEOUT", 0),
        ("OUT_OF_MEMORY", 0), ("CANCELLED", 0), ("NODE_FAIL", 0))] == [
        "pending", "requeued", "running", "requeued", "finished", "failed", "failed", "failed", "failed"]


def test_the_table_logs_each_change_once_when_not_on_a_terminal(capsys):
    table = ProgressTable("slurm launch", interactive=False)
    rows = [Row("resnet50 seed 0", "12_0", "pending"), Row("gelu seed 0", "12_1", "pending")]
    table.show(rows)
    table.show(rows)
    table.show([rows[0], Row("gelu seed 0", "12_1", "running")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines if line.startswith("[")] == [
        "resnet50 seed 0 (job 12_0): pending", "gelu seed 0 (job 12_1): pending", "gelu seed 0 (job 12_1): running"]
    assert lines[-1] == "slurm launch: 2 job(s), 1 pending, 1 running"


@pytest.mark.slow  # four local jobs, each a fresh Python process importing torch: about a minute
def test_local_launch_runs_at_most_max_parallel_jobs_at_once(tmp_path, cli):
    result = cli("--upto", "modern_recipe", "--preset", "smoke", "--seeds", "0,1", "--launcher", "local",
                 "--max-parallel", "2", "--no-progress", cwd=tmp_path, env={"ROADMAP_POLL_S": "0.5"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("resnet50_to_convnext_t")
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'step'")
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    # Job processes, from the times submitit logs as each starts and exits: never more than 2 at once.
    spans = [log_span(log) for log in (tmp_path / "checkpoints").rglob("*_log.out")]
    assert len(spans) == 4
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 2


def log_span(log: Path) -> tuple[datetime, datetime]:
    """When a submitit job started and exited, from its log's 'submitit INFO (YYYY-MM-DD HH:MM:SS,mmm)' lines."""
    stamps = re.findall(r"^submitit \w+ \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\)", log.read_text(), re.MULTILINE)
    times = [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp in stamps]
    return times[0], times[-1]


# ------------------------------------------------------------------------------ claims and simultaneous studies


def test_a_run_claimed_by_another_process_is_not_trained_again(tmp_path, cli):
    from roadmap import load_roadmap
    from roadmap.cli.ablation import build_study, main
    from roadmap.schema import checkpoint_folder
    from roadmap.study.claim import Claim

    args = ["--upto", "modern_recipe", "--preset", "smoke", "--no-progress"]
    study = build_study(load_roadmap("resnet50_to_convnext_t"), main.make_context("x", list(args)).params)
    resnet = study.plan.variant("resnet50")
    with Claim(tmp_path / checkpoint_folder(study.checkpoint_dir, study.experiment, resnet.config_hash, 0)) as claim:
        assert claim.acquire()
        result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"[1/2] resnet50 seed 0: being trained by pid {os.getpid()} on " in result.stdout
    assert "(1 finished, 0 skipped, 1 being trained elsewhere, 0 diverged, 0 failed)" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("resnet50_to_convnext_t")
    steps = [r.data.tags["step"] for r in client.search_runs([experiment.experiment_id], "tags.run_kind = 'step'")]
    assert steps == ["modern_recipe"]


def test_three_studies_started_at_once_on_a_new_sqlite_store_all_succeed(tmp_path):
    """Same command three times at the same moment: the store is created once, every run recorded once."""
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve().parent.parent / "run_ablation.py"), "--upto",
               "modern_recipe", "--preset", "smoke", "--seeds", "0,1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    studies = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env) for _ in range(3)]
    outputs = [study.communicate(timeout=600) for study in studies]
    assert [study.returncode for study in studies] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")  # the store opens afterwards
    experiment = client.get_experiment_by_name("resnet50_to_convnext_t")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    steps = sorted((r.data.tags["step"], r.data.tags["seed"]) for r in runs if r.data.tags["run_kind"] == "step")
    assert steps == [("modern_recipe", "0"), ("modern_recipe", "1"), ("resnet50", "0"), ("resnet50", "1")]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sum(r.data.tags["run_kind"] == "study" for r in runs) == 3  # one parent per invocation
