"""The tracking server: a wrong URI is one line (exit 2) at once, a server that is down is waited for (bounded,
announced in one line), MLflow's system metrics land on step runs; slow: a study on PostgreSQL through
`--launcher local` with the server restarted three times, and a server with accounts (basic-auth).
"""
from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from roadmap.errors import SpecError
from roadmap.schema import Metric, RunKind, Status, launch_folder
from roadmap.tracking import Tracker, TrackingError, TrackingUnreachable, check_tracking_uri
from roadmap.tracking.server import MAX_DELAY_S, PatientClient, patiently

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tools" / "mlflow"
MLFLOW_JSON = '{"experiments": []}'


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's next (status, body); the last one repeats."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        answers = self.server.answers
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/html")
        self.end_headers()
        self.wfile.write(body.encode())

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def answering(answers: list[tuple[int, str]], port: int = 0) -> Iterator[str]:
    """A local HTTP server giving `answers` in turn, at http://127.0.0.1:PORT."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Answers)
    server.answers = list(answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------ a wrong URI: exit 2 at once

@pytest.mark.parametrize(("answers", "credentials", "expected"), [
    (None, None, r"names a host that does not resolve \('no-such-host.invalid'\)"),
    ([(404, "<html>Not Found</html>")], None, r"answers, but not as an MLflow tracking server \(HTTP 404"),
    ([(200, "<html>a wiki</html>")], None, r"answers, but not as an MLflow tracking server \(HTTP 200"),
    ([(401, "You are not authenticated")], None, r"needs a user name and password \(HTTP 401\); set "
                                                 r"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ([(401, "You are not authenticated")], ("alice", "wrong-secret"),
     r"refused the user name and password of 'alice' \(HTTP 401\)"),
    ([(403, "Permission denied")], ("alice", "secret"), r"does not let user 'alice' read experiments \(HTTP 403\)"),
], ids=["unknown host", "404", "not json", "401 no account", "401 wrong password", "403"])
def test_a_wrong_uri_is_one_line_at_once_whatever_the_patience(answers, credentials, expected, monkeypatch, capsys):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials[1])
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        uri = stack.enter_context(answering(answers)) if answers else "http://no-such-host.invalid:5000"
        with pytest.raises(TrackingError, match=expected) as raised:
            Tracker(uri, "x", patience_s=600)
    message = str(raised.value)
    assert isinstance(raised.value, SpecError) and "\n" not in message
    assert "wrong-secret" not in message
    assert time.monotonic() - start < 15
    assert "unreachable" not in capsys.readouterr().err  # never taken for an outage


# ------------------------------------------------------------------------ a server that is down: waited for

def test_a_server_that_comes_back_is_waited_for_with_one_line(capsys):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    ready = threading.Event()

    def come_back_later() -> None:
        time.sleep(2.5)
        with answering([(200, MLFLOW_JSON)], port=port):
            ready.set()
            time.sleep(30)

    threading.Thread(target=come_back_later, daemon=True).start()
    start = time.monotonic()
    assert check_tracking_uri(uri, patience_s=60) == uri
    assert ready.is_set() and 2.5 <= time.monotonic() - start < 20
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(rf"tracking server {uri} unreachable \(Connection refused\); retrying for up to 60 s", lines[0])
    assert re.fullmatch(rf"tracking server {uri} answers again after \d+ s", lines[1])


def test_a_server_answering_503_then_200_is_waited_for(capsys):
    with answering([(503, "Service Unavailable")] * 2 + [(200, MLFLOW_JSON)]) as uri:
        assert check_tracking_uri(uri, patience_s=60) == uri
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"tracking server {uri} unreachable (HTTP 503 Service Unavailable); retrying for up to 60 s"
    assert len(lines) == 2


def test_the_patience_bounds_the_wait_and_the_end_is_an_outage_not_a_bad_input(capsys):
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnreachable) as raised:
        Tracker(uri, "x", patience_s=3)
    assert 3 <= time.monotonic() - start < 10
    assert not isinstance(raised.value, SpecError)  # the front ends exit 2 only for a SpecError
    assert str(raised.value).startswith(f"tracking server {uri} still unreachable after 3 s of retries")
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_backoff_doubles_up_to_its_cap_and_stops_at_the_patience():
    clock = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    def refused() -> None:
        raise requests.exceptions.ConnectionError("down") from ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(TrackingUnreachable, match="after 5 min"):
        patiently("http://h:1", refused, 300, now=lambda: clock[0], sleep=sleep)
    assert sleeps[:7] == [1, 2, 4, 8, 16, MAX_DELAY_S, MAX_DELAY_S]
    assert sum(sleeps) == 300 and max(sleeps) == MAX_DELAY_S


def test_patient_client_waits_out_an_outage_in_a_call_and_passes_other_errors_at_once(capsys):
    calls = []

    class FlakyClient:
        def get_run(self, run_id: str) -> str:
            calls.append(run_id)
            if len(calls) <= 2:  # as MLflow raises it: its exception, from requests', from the socket's
                refused = requests.exceptions.ConnectionError("Max retries exceeded")
                refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
                raise MlflowException("API request failed") from refused
            return f"run {run_id}"

        def delete_run(self, run_id: str) -> None:
            raise MlflowException(f"Run '{run_id}' not found")

    client = PatientClient(FlakyClient(), "http://h:1", patience_s=60)
    assert client.get_run("abc") == "run abc" and len(calls) == 3
    start = time.monotonic()
    with pytest.raises(MlflowException, match="not found"):
        client.delete_run("abc")
    assert time.monotonic() - start < 0.5
    assert len(capsys.readouterr().err.splitlines()) == 2  # unreachable ..., answers again ...


# ------------------------------------------------------------------------------------ MLflow's system metrics

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating MLflow's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_step_runs_carry_system_metrics_and_a_resumed_run_continues_their_steps(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.3")
    tracker = Tracker(store, "system_metrics")
    with pytest.raises(RuntimeError), tracker.step_run("gelu", 0, "h", params={}, tags={}, config={}) as first:
        first.log_epoch({"train_loss": 2.0}, 1)
        time.sleep(1.0)
        raise RuntimeError("node lost")
    with tracker.step_run("gelu", 0, "h", params={}, tags={}, config={}) as run:
        assert run.resumed and run.run_id == first.run_id
        for epoch in (1, 2):
            run.log_epoch({"train_loss": 1.0 / epoch}, epoch)
            time.sleep(0.5)
        run.log_final({"top1": 50.0}, Status.FINISHED)
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    metrics = client.get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage"} <= set(metrics)
    steps = [m.step for m in client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 4 and sorted(steps) == list(range(len(steps)))  # both attempts, numbered on
    # Samples do not move the run's own steps: the final numbers follow the last epoch.
    assert [m.step for m in client.get_metric_history(run.run_id, "top1")] == [3]


def test_system_metrics_can_be_switched_off(store):
    tracker = Tracker(store, "quiet", system_metrics=False)
    with tracker.step_run("gelu", 0, "h", params={}, tags={}, config={}) as run:
        run.log_final({"top1": 50.0}, Status.FINISHED)
    metrics = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(run.run_id).data.metrics
    assert metrics == {"top1": 50.0}


# ------------------------------------------------------------------- slow: real servers from tools/mlflow/*.sh

class ServerScripts:
    """tools/mlflow/start_server.sh and stop_server.sh on one folder and its ports."""

    def __init__(self, folder: Path, port: int, pg_port: int) -> None:
        self.env = {**os.environ, "ROADMAP_MLFLOW_DIR": str(folder), "ROADMAP_MLFLOW_PORT": str(port),
                    "ROADMAP_MLFLOW_PG_PORT": str(pg_port), "ROADMAP_MLFLOW_PYTHON": sys.executable}

    def start(self, *options: str) -> str:
        """The tracking URI (the script's last line)."""
        done = subprocess.run(["bash", str(SCRIPTS / "start_server.sh"), *options], env=self.env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    def stop(self, *options: str) -> None:
        done = subprocess.run(["bash", str(SCRIPTS / "stop_server.sh"), *options], env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]


@contextlib.contextmanager
def server_folder() -> Iterator[Path]:
    """A folder the `postgres` user can enter (pytest's own, and $TMPDIR maybe, are private); removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="roadmap-mlflow-test-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _require_server_tools() -> None:
    """Skip (or fail, with ROADMAP_REQUIRE_MLFLOW_SERVER=1) where the scripts cannot run here."""
    missing = []
    if os.geteuid() != 0 and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        missing.append("PostgreSQL (as root the script installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing.append('the PostgreSQL driver (pip install ".[server]")')
    if missing:
        message = f"no tracking server here: missing {' and '.join(missing)}"
        if os.environ.get("ROADMAP_REQUIRE_MLFLOW_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[tuple[str, ServerScripts]]:
    """The server of ROADMAP_MLFLOW_DIR if one is set (CI starts it), else one of its own in a temporary folder."""
    _require_server_tools()
    given = os.environ.get("ROADMAP_MLFLOW_DIR")
    with contextlib.ExitStack() as stack:
        if given:
            scripts = ServerScripts(Path(given), int(os.environ.get("ROADMAP_MLFLOW_PORT", "5055")),
                                    int(os.environ.get("ROADMAP_MLFLOW_PG_PORT", "5433")))
        else:
            scripts = ServerScripts(stack.enter_context(server_folder()), _free_port(), _free_port())
            stack.callback(scripts.stop)
        yield scripts.start(), scripts  # nothing is started twice: a server CI started is only checked


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float, study: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert study.poll() is None, f"the study exited ({study.returncode}) while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.3)


def _step_runs(client: MlflowClient, experiment: str) -> list:
    try:
        found = client.get_experiment_by_name(experiment)
        return [] if found is None else client.search_runs(
            [found.experiment_id], f"tags.run_kind = '{RunKind.STEP}'", max_results=1000)
    except MlflowException:
        return []


WAIT_LINE = "; retrying for up to"


def _log_text(folder: Path) -> str:
    """Every job log under a launch folder (submitit's *.out and *.err)."""
    return "".join(path.read_text(errors="replace") for path in sorted(folder.rglob("*"))
                   if path.is_file() and path.suffix in (".out", ".err"))


@pytest.mark.slow  # a study of 9 runs and three server restarts: about 5-8 min on 2 busy cores
def test_a_study_on_postgres_survives_restarts_as_jobs_start_mid_training_and_as_it_collects(postgres_server,
                                                                                            tmp_path):
    """Each outage lasts until the wait it should cause is announced, so that every moment is really hit."""
    uri, server = postgres_server
    experiment = f"restarts_{uuid.uuid4().hex[:8]}"
    seeds, steps, epochs = (0, 1, 2), ("resnet50", "modern_recipe", "stage_ratio"), 2
    checkpoints = tmp_path / "checkpoints"
    launch = launch_folder(checkpoints, experiment)
    log_path = tmp_path / "study.log"
    client = MlflowClient(tracking_uri=uri)
    with log_path.open("w") as log:
        study = subprocess.Popen(
            [sys.executable, str(REPO / "run_ablation.py"), "--preset", "smoke", "--upto", steps[-1],
             "--seeds", ",".join(map(str, seeds)), "--epochs", str(epochs), "--launcher", "local",
             "--max-parallel", "3", "--tracking-uri", uri, "--experiment", experiment,
             "--checkpoint-dir", str(checkpoints), "--results-dir", str(tmp_path / "results"), "--no-progress"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "ROADMAP_POLL_S": "0.5", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        try:
            start = time.monotonic()
            # 1. As the jobs start: the first has begun (importing torch); the whole server goes down until a job
            #    says that it waits (connection refused).
            _wait_for("started job", lambda: bool(_log_text(launch)), 300, study)
            server.stop()
            _wait_for("job waiting as it starts", lambda: WAIT_LINE in _log_text(launch), 300, study)
            time.sleep(5)
            server.start()
            # 2. Mid-training: a run has logged an epoch; PostgreSQL goes down (the server answers 500) until a
            #    job waits for it.
            _wait_for("logged epoch", lambda: any(Metric.VAL_TOP1 in run.data.metrics
                                                  for run in _step_runs(client, experiment)), 600, study)
            waited = _log_text(launch).count(WAIT_LINE)
            server.stop("postgres")
            _wait_for("job waiting mid-training", lambda: _log_text(launch).count(WAIT_LINE) > waited, 300, study)
            server.start()
            # 3. As the study collects: every run finished; the mlflow server goes down until the launcher, reading
            #    the runs back, waits for it.
            _wait_for("finished runs", lambda: sum(run.info.status == "FINISHED" for run in _step_runs(
                client, experiment)) == len(steps) * len(seeds), 900, study)
            collect_from = log_path.stat().st_size
            server.stop("mlflow")
            _wait_for("study waiting as it collects", lambda: WAIT_LINE in log_path.read_text()[collect_from:],
                      300, study)
            server.start()
            returncode = study.wait(timeout=900)
        finally:
            if study.poll() is None:
                study.kill()
                study.wait()
    wall_s = time.monotonic() - start
    output = log_path.read_text()
    assert returncode == 0, output[-4000:]
    assert "Traceback" not in output
    runs = _step_runs(client, experiment)
    keys = sorted((run.data.tags["step"], int(run.data.tags["seed"])) for run in runs)
    assert keys == sorted((step, seed) for step in steps for seed in seeds), keys  # one run each, none twice
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == Status.FINISHED
        for key in (Metric.TRAIN_LOSS, Metric.VAL_TOP1):
            logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert logged == list(range(1, epochs + 1)), (run.info.run_name, key, logged)  # each epoch once
        assert "system/cpu_utilization_percentage" in run.data.metrics
    assert (tmp_path / "results" / experiment / "roadmap.csv").is_file()
    print(f"PostgreSQL study: {len(runs)} runs, 3 restarts, {wall_s:.0f} s wall; waits announced: "
          f"{_log_text(launch).count(WAIT_LINE)} in jobs, {output.count(WAIT_LINE)} in the launcher")


@pytest.fixture(scope="module")
def basic_auth_server() -> Iterator[tuple[str, ServerScripts]]:
    """`mlflow server --app-name basic-auth` on PostgreSQL, with user alice (password alice-secret-1)."""
    _require_server_tools()
    from mlflow.server import get_app_client  # its Flask app: seconds to import, only here
    with server_folder() as folder:
        scripts = ServerScripts(folder, _free_port(), _free_port())
        scripts.env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password = uuid.uuid4().hex
        try:
            uri = scripts.start("--basic-auth")
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
                patch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
                get_app_client("basic-auth", tracking_uri=uri).create_user("alice", "alice-secret-1")
            yield uri, scripts
        finally:
            scripts.stop()


def _study(uri: str, tmp_path: Path, experiment: str, username: str | None, password: str | None):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING_")}
    if username:
        env |= {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}
    return subprocess.run(
        [sys.executable, str(REPO / "run_ablation.py"), "--preset", "smoke", "--upto", "resnet50",
         "--tracking-uri", uri, "--experiment", experiment, "--checkpoint-dir", str(tmp_path / "checkpoints"),
         "--results-dir", str(tmp_path / "results"), "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # the server's start and a smoke study: about 2 min
def test_a_study_on_a_server_with_accounts_runs_as_its_user(basic_auth_server, tmp_path):
    from mlflow.server import get_app_client

    uri, _ = basic_auth_server
    done = _study(uri, tmp_path, "accounts", "alice", "alice-secret-1")
    assert done.returncode == 0, done.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        patch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-secret-1")
        client = MlflowClient(tracking_uri=uri)
        runs = _step_runs(client, "accounts")
        experiment_id = client.get_experiment_by_name("accounts").experiment_id
        permission = get_app_client("basic-auth", tracking_uri=uri).get_user_permission(
            "alice", "experiment", experiment_id)
    assert [(run.data.tags["step"], run.info.status) for run in runs] == [("resnet50", "FINISHED")]
    assert permission.permission == "MANAGE"  # the experiment is alice's: the study ran as her


@pytest.mark.slow  # shares the basic-auth server; each refusal costs one interpreter start
@pytest.mark.parametrize(("username", "password", "expected"), [
    ("alice", "not-her-password", "refused the user name and password of 'alice' (HTTP 401)"),
    (None, None, "needs a user name and password (HTTP 401)"),
], ids=["wrong password", "no account"])
def test_a_refused_account_is_one_line_exit_2_before_anything_trains(basic_auth_server, tmp_path, username, password,
                                                                     expected):
    uri, _ = basic_auth_server
    done = _study(uri, tmp_path, "refused", username, password)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and "MLFLOW_TRACKING_PASSWORD" in errors[0], done.stderr
    assert "not-her-password" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "checkpoints").rglob("*.pt")) and not (tmp_path / "results").exists()
