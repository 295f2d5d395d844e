"""Tracking: parent and nested runs, params, metrics, tags, artifacts, skip and resume, URI checks, a real server."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from roadmap.schema import Status
from roadmap.tracking import (
    DEFAULT_TRACKING_URI,
    StepRun,
    Tracker,
    TrackingError,
    TrackingUnreachable,
    environment_tags,
    experiment_exists,
    load_metric_history,
    load_step_runs,
)

EPOCHS = [
    {"train_loss": 2.3, "lr": 0.004, "val_top1": 10.5, "val_top5": 50.25, "train_img_per_s": 101.0},
    {"train_loss": 1.9, "lr": 0.002, "val_top1": 20.5, "val_top5": 60.25, "train_img_per_s": 102.0},
    {"train_loss": 1.5, "lr": 0.000001, "val_top1": 30.5, "val_top5": 70.25, "train_img_per_s": 103.0},
]
FINAL = {"top1": 30.5, "top5": 70.25, "params": 25557032, "gmacs": 4.09, "train_img_per_s": 102.0,
         "eval_img_per_s": 300.0, "peak_memory_mb": 812.5, "wall_time_s": 12.25}
STEP_PARAMS = {"arch": {"kernel_size": 7, "depths": [3, 3, 9, 3]}, "recipe": {"base_lr": 0.004}, "seed": 0}
STEP_TAGS = {"order": 9, "group": "large kernel", "adopted": True, "baseline": "move_up_dwconv",
             "roadmap": "resnet50_to_convnext_t", "dataset": "synthetic", "preset": "smoke", "device": "cpu"}
CONFIG = {"arch": {"kernel_size": 7, "depths": [3, 3, 9, 3]}, "recipe": {"base_lr": 0.004}, "data": {"image_size": 32}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating MLflow's tables takes seconds); each test its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def tracker(store, request) -> Tracker:
    # MLflow's system metrics would add system/* keys to the runs compared here: tests/test_tracking_server.py
    # checks them.
    return Tracker(store, request.node.name, system_metrics=False)


def client_for(tracker: Tracker) -> MlflowClient:
    return MlflowClient(tracking_uri=tracker.tracking_uri)


def log_step(tracker: Tracker, step: str, seed: int, config_hash: str, final: dict | None = None,
             status: Status = Status.FINISHED, reason: str = "") -> StepRun:
    with tracker.step_run(step, seed, config_hash, params=STEP_PARAMS, tags=STEP_TAGS, config=CONFIG) as run:
        for epoch, metrics in enumerate(EPOCHS):
            run.log_epoch(metrics, epoch)
        run.log_final(final or FINAL, status, reason)
    return run


def test_default_uri_is_mlflows_own_default():
    from mlflow.tracking._tracking_service.utils import DEFAULT_TRACKING_URI as mlflow_default

    assert DEFAULT_TRACKING_URI == mlflow_default == "sqlite:///mlflow.db"


def test_study_nests_step_runs_with_params_metrics_tags_and_config(tracker, tmp_path):
    with tracker.study("invocation", params={"steps": "kernel_7", "seeds": "0"}, tags={"preset": "smoke"}) as parent:
        run = log_step(tracker, "kernel_7", 0, "hash7")
    client = client_for(tracker)
    parent_run, step_run = client.get_run(parent), client.get_run(run.run_id)

    assert parent_run.info.status == "FINISHED" and step_run.info.status == "FINISHED"
    assert parent_run.data.params == {"steps": "kernel_7", "seeds": "0"}
    assert parent_run.data.tags["preset"] == "smoke"
    assert "mlflow.parentRunId" not in parent_run.data.tags
    assert step_run.data.tags["mlflow.parentRunId"] == parent
    assert step_run.info.run_name == "kernel_7 seed 0"
    assert step_run.info.experiment_id == tracker.experiment_id
    assert step_run.data.params == {"arch.kernel_size": "7", "arch.depths": "[3, 3, 9, 3]",
                                    "recipe.base_lr": "0.004", "seed": "0"}
    tags = step_run.data.tags
    assert {key: tags[key] for key in ("step", "seed", "config_hash", "order", "adopted", "baseline", "status")} \
        == {"step": "kernel_7", "seed": "0", "config_hash": "hash7", "order": "9", "adopted": "True",
            "baseline": "move_up_dwconv", "status": "finished"}
    assert tags["reason"] == "-"
    expected_final = {key: float(value) for key, value in FINAL.items()}
    expected_final |= {key: EPOCHS[-1][key] for key in ("train_loss", "lr", "val_top1", "val_top5")}
    assert step_run.data.metrics == pytest.approx(expected_final)
    for key in ("train_loss", "lr", "val_top1", "val_top5"):
        assert load_metric_history(tracker.tracking_uri, run.run_id, key) == [(epoch, e[key]) for epoch, e in
                                                                              enumerate(EPOCHS)]
    # Logged per epoch and as a final figure: the final one comes last, one step after the last epoch.
    assert load_metric_history(tracker.tracking_uri, run.run_id, "train_img_per_s") == [
        (0, 101.0), (1, 102.0), (2, 103.0), (3, FINAL["train_img_per_s"])]
    assert {m.step for m in client.get_metric_history(run.run_id, "top1")} == {len(EPOCHS)}

    downloaded = client.download_artifacts(run.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(downloaded).read_text()) == CONFIG


def test_artifacts_live_beside_the_sqlite_database(tracker, store):
    run = log_step(tracker, "gelu", 0, "h")
    artifact_uri = client_for(tracker).get_run(run.run_id).info.artifact_uri
    database_dir = Path(store[len("sqlite:///"):]).parent
    assert artifact_uri.startswith((database_dir / "mlruns").as_uri())
    assert (database_dir / "mlruns" / "test_artifacts_live_beside_the_sqlite_database" / run.run_id / "artifacts"
            / "config.json").is_file()


def test_find_finished_matches_seed_and_hash_whatever_the_variant_was_called(tracker):
    """A run is its configuration and seed: a leave-one-out variant that is a cumulative step reuses its run."""
    with tracker.study("invocation", params={}, tags={}):
        finished = log_step(tracker, "bn_to_ln", 0, "hashA")
        log_step(tracker, "bn_to_ln", 1, "hashB")
    assert tracker.find_finished(0, "hashA") == finished.run_id
    assert tracker.find_finished(0, "hashB") is None
    assert tracker.find_finished(2, "hashA") is None


def test_diverged_run_counts_as_finished_and_keeps_its_reason(tracker):
    run = log_step(tracker, "bn_to_ln", 0, "h", final={"top1": 0.1}, status=Status.DIVERGED, reason="loss is nan")
    tags = client_for(tracker).get_run(run.run_id).data.tags
    assert (tags["status"], tags["reason"]) == ("diverged", "loss is nan")
    assert tracker.find_finished(0, "h") == run.run_id


def test_interrupted_step_run_is_resumed_not_duplicated(tracker):
    client = client_for(tracker)
    with pytest.raises(RuntimeError, match="out of memory"):
        with tracker.study("first", params={}, tags={}) as first_parent:
            with tracker.step_run("gelu", 0, "h", params=STEP_PARAMS, tags=STEP_TAGS, config=CONFIG) as broken:
                broken.log_epoch(EPOCHS[0], 0)
                raise RuntimeError("CUDA out of memory")
    failed = client.get_run(broken.run_id)
    assert failed.info.status == "FAILED" and client.get_run(first_parent).info.status == "FAILED"
    assert failed.data.tags["status"] == "failed" and "out of memory" in failed.data.tags["reason"]
    assert tracker.find_finished(0, "h") is None

    with tracker.study("second", params={}, tags={}) as second_parent:
        resumed = log_step(tracker, "gelu", 0, "h")
    assert resumed.resumed and resumed.run_id == broken.run_id
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == second_parent
    assert run.data.tags["attempts"] == "2" and run.data.tags["status"] == "finished"
    assert "out of memory" not in run.data.tags.get("reason", "")
    step_runs = [r for r in load_step_runs(tracker.tracking_uri, tracker.experiment) if r.tags["step"] == "gelu"]
    assert [r.run_id for r in step_runs] == [broken.run_id]
    assert tracker.find_finished(0, "h") == broken.run_id


def test_keyboard_interrupt_kills_both_runs_and_propagates(tracker):
    client = client_for(tracker)
    with pytest.raises(KeyboardInterrupt):
        with tracker.study("interrupted", params={}, tags={}) as parent:
            with tracker.step_run("gelu", 0, "h", params={}, tags={}, config={}) as run:
                raise KeyboardInterrupt
    assert client.get_run(parent).info.status == "KILLED"
    killed = client.get_run(run.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["status"] == "killed"


def test_finished_run_is_not_resumed(tracker):
    first = log_step(tracker, "gelu", 0, "h")
    second = log_step(tracker, "gelu", 0, "h")  # what --force does
    assert not second.resumed and second.run_id != first.run_id


def test_bad_metrics_and_status_are_rejected(tracker):
    with tracker.step_run("gelu", 0, "h", params={}, tags={}, config={}) as run:
        with pytest.raises(TrackingError, match="'top1'"):
            run.log_metrics({"top1": [1, 2]})
        with pytest.raises(TrackingError, match="finished, diverged"):
            run.log_final({"top1": 1.0}, "great")
        run.log_metrics({"bench_train_img_per_s": 55.5, "bench_peak_memory_mib": None})
    metrics = client_for(tracker).get_run(run.run_id).data.metrics
    assert metrics == {"bench_train_img_per_s": 55.5}


@pytest.mark.parametrize("uri", ["foo://x", "sqlite:/bad", "sqlite://", "sqlite:///", "postgresql://h/db", "   "])
def test_malformed_uri_is_one_line_error_naming_the_valid_forms(uri, tmp_path):
    start = time.monotonic()
    with pytest.raises(TrackingError) as raised:
        Tracker(uri, "x")
    message = str(raised.value)
    assert "\n" not in message and "sqlite:///PATH" in message and "http(s)://HOST:PORT" in message
    if uri.strip():
        assert repr(uri) in message
    assert time.monotonic() - start < 2


def test_unusable_local_stores_are_one_line_errors(tmp_path, monkeypatch):
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("hello")
    with pytest.raises(TrackingError, match=r"cannot be opened \(DatabaseError: .*file is not a database\)"):
        Tracker(f"sqlite:///{not_a_database}", "x")
    with pytest.raises(TrackingError, match="names a directory"):
        Tracker(f"sqlite:///{tmp_path}", "x")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError, match="file store, which mlflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true"):
        Tracker((tmp_path / "mlruns").as_uri(), "x")


def test_unreachable_server_is_waited_for_then_an_outage_not_a_bad_input():
    """(tests/test_tracking_server.py tells a wrong URI from a server that is down, and waits for one that is back.)"""
    start = time.monotonic()
    with pytest.raises(TrackingUnreachable, match=r"http://127.0.0.1:9 still unreachable after 2 s"):
        Tracker("http://127.0.0.1:9", "x", patience_s=2)
    assert 2 <= time.monotonic() - start < 10
    with pytest.raises(TrackingUnreachable, match="unreachable"):
        experiment_exists("http://127.0.0.1:9", "x", patience_s=0)


def test_experiment_exists_never_creates_a_store(tmp_path, store):
    absent = tmp_path / "absent.db"
    assert experiment_exists(f"sqlite:///{absent}", "anything") is False
    assert not absent.exists()
    Tracker(store, "present")
    assert experiment_exists(store, "present") is True
    assert experiment_exists(store, "never_created") is False
    with pytest.raises(TrackingError, match="'never_created' does not exist"):
        load_step_runs(store, "never_created")


def test_environment_tags_name_revision_and_versions():
    import importlib.metadata
    import platform

    tags = environment_tags()
    assert tags["mlflow_version"] == importlib.metadata.version("mlflow")
    assert tags["torch_version"] == importlib.metadata.version("torch")
    assert tags["python_version"] == platform.python_version()
    assert set(tags) == {"git_revision", "python_version", "torch_version", "torchvision_version", "timm_version",
                         "mlflow_version"}
    assert tags["git_revision"] == "unknown" or len(tags["git_revision"].split("+")[0]) == 40


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port, its stores in a temporary folder; stopped afterwards."""
    folder = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited with {server.returncode}: {(folder / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health within 180 s")
            time.sleep(0.5)
        yield uri, folder
    finally:
        # The server forks its workers into its own session: stop that group, which this fixture started.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow  # starting the server alone takes 20-80 s on a 2-core machine
def test_fake_study_against_a_real_server(mlflow_server, tmp_path):
    uri, folder = mlflow_server
    tracker = Tracker(uri, "served_study")
    with tracker.study("invocation", params={"seeds": "0,1"}, tags={"preset": "smoke"}) as parent:
        runs = [log_step(tracker, "kernel_7", seed, "hash7") for seed in (0, 1)]
    assert tracker.find_finished(1, "hash7") == runs[1].run_id
    assert experiment_exists(uri, "served_study")
    loaded = load_step_runs(uri, "served_study")
    assert {r.run_id for r in loaded} == {run.run_id for run in runs}
    assert all(r.parent_run_id == parent and r.metrics["top1"] == 30.5 for r in loaded)
    assert load_metric_history(uri, runs[0].run_id, "val_top5") == [(0, 50.25), (1, 60.25), (2, 70.25)]
    downloaded = MlflowClient(tracking_uri=uri).download_artifacts(runs[0].run_id, "config.json", str(tmp_path))
    assert Path(downloaded).read_text().startswith("{")
    # The server proxies artifacts into its own destination folder.
    assert list((folder / "artifacts").rglob("config.json"))


@pytest.mark.slow  # the server start and a real smoke study: a few minutes on a 2-core machine
def test_smoke_study_against_a_real_server(mlflow_server, tmp_path):
    """run_ablation.py as a user runs it, recording into an `mlflow server` on 127.0.0.1."""
    import subprocess
    import sys
    from pathlib import Path

    uri, _ = mlflow_server
    script = Path(__file__).resolve().parent.parent / "run_ablation.py"
    result = subprocess.run([sys.executable, str(script), "--upto", "modern_recipe", "--preset", "smoke",
                             "--tracking-uri", uri, "--experiment", "served", "--no-progress"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = load_step_runs(uri, "served")
    assert sorted(run.tags["step"] for run in runs) == ["modern_recipe", "resnet50"]
    assert all(run.mlflow_status == "FINISHED" and "top1" in run.metrics for run in runs)
    assert not (tmp_path / "mlflow.db").exists()
