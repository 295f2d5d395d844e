"""Nothing lost: a study killed with SIGKILL mid-step resumes exactly; torchrun trains one job on 2 CPU processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roadmap.training.result import TrainResult

REPO = Path(__file__).resolve().parent.parent
# One step, several short epochs, so that a kill lands between the first checkpoint and the end.
ARGS = ["--upto", "resnet50", "--preset", "smoke", "--epochs", "6", "--no-progress"]


def _final(workdir: Path) -> tuple[TrainResult, Path]:
    (final,) = (workdir / "checkpoints").rglob("final.json")
    return TrainResult.from_json(json.loads(final.read_text())), final.parent


def _weights(checkpoint_dir: Path) -> dict:
    return torch.load(checkpoint_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def test_killed_study_resumes_and_ends_as_an_uninterrupted_one(tmp_path, cli):
    reference_dir, resumed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    reference_dir.mkdir()
    resumed_dir.mkdir()
    assert cli(*ARGS, cwd=reference_dir).returncode == 0

    process = subprocess.Popen([sys.executable, str(REPO / "run_ablation.py"), *ARGS], cwd=resumed_dir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((resumed_dir / "checkpoints").rglob("last.pt")) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not list((resumed_dir / "checkpoints").rglob("final.json")), "killed too late: the step had finished"

    rerun = cli(*ARGS, cwd=resumed_dir)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming MLflow run" in rerun.stdout and "resumed from epoch" in rerun.stdout
    resumed, resumed_checkpoints = _final(resumed_dir)
    reference, reference_checkpoints = _final(reference_dir)
    assert 1 <= resumed.resumed_from_epoch < 6
    for key in ("top1", "top5", "top1_best", "top1_best_epoch", "train_loss", "epochs_completed"):
        assert getattr(resumed, key) == getattr(reference, key), key
    assert [e.train_loss for e in resumed.history] == [e.train_loss for e in reference.history]
    for name in ("predictions.csv", "predictions_best.csv", "weights.safetensors"):
        assert (resumed_checkpoints / name).read_bytes() == (reference_checkpoints / name).read_bytes(), name
    reference_weights = _weights(reference_checkpoints)
    for name, tensor in _weights(resumed_checkpoints).items():
        assert torch.equal(tensor, reference_weights[name]), name

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{resumed_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("resnet50_to_convnext_t")
    step_runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'step'")
    assert len(step_runs) == 1 and step_runs[0].info.status == "FINISHED"
    history = client.get_metric_history(step_runs[0].info.run_id, "val_top1")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # two processes on two cores: a minute or more
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_torchrun_two_cpu_processes_train_as_one_job(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "run_ablation.py"), "--upto", "modern_recipe", "--preset", "smoke", "--batch-size", "32",
               "--no-progress"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Rank 0 alone reports: one line per step, and one batch split across both processes.
    assert result.stdout.count("batch 32 (16 x 1 accumulation x 2 processes), BatchNorm batch 16") == 2
    assert result.stdout.count("] resnet50 seed 0: top-1") == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("resnet50_to_convnext_t")
    step_runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'step'")
    assert sorted(r.data.tags["step"] for r in step_runs) == ["modern_recipe", "resnet50"]
    assert all(r.data.tags["device"] == "cpu x2" for r in step_runs)
    assert len(list((tmp_path / "checkpoints").rglob("final.json"))) == 2
    assert (tmp_path / "results" / "resnet50_to_convnext_t" / "roadmap.csv").exists()
