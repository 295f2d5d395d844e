"""Screenshot a roadmap study as the MLflow 3.x web UI shows it.

Starts ``mlflow server`` on a free loopback port for a sqlite tracking store, opens it in
headless Chromium (via Playwright) and writes four PNGs to --out:

  mlflow_runs.png              runs table, parent run expanded, Dataset column visible
  mlflow_parent_artifacts.png  the study (parent) run's Artifacts tab with the chart PNG selected
  mlflow_step_run.png          a step (child) run's Overview, showing its datasets
  mlflow_step_artifacts.png    that step run's Artifacts tab with the weights file selected

The parent run is the newest run tagged run_kind=study, the step run the first child
(mlflow.parentRunId) tagged run_kind=step. The server is started in its own process group;
its pid is written to OUT/mlflow_server.pid and that group is stopped at the end, on error too.

MLflow 3.x opens experiments in its GenAI overview; the experiment tag mlflow.experimentKind
does not change that in 3.17.2. The UI's own switch is the sidebar "GenAI | Model training"
toggle, i.e. the URL query ?workflowType=machine_learning or localStorage key
mlflow.workflowType_v1; this script sets both.

Needs: Debian chromium (apt-get install -y chromium fonts-dejavu-core) and
``pip install playwright`` (do NOT run ``playwright install``; the Debian binary is used).

Usage:
  python tools/mlflow_screenshots.py --tracking-uri sqlite:///runs/mlflow.db \\
      --experiment convnext-roadmap --out /tmp/shots
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Seeded before the app loads: model-training workflow, no assistant panel, no onboarding popover.
INIT_JS = """try {
  localStorage.setItem('mlflow.workflowType_v1', '"machine_learning"');
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
  localStorage.setItem('mlflow.detectIssues.guidanceShown_v1', 'true');
} catch (e) {}"""
# True while anything that looks like a spinner or skeleton is on screen.
BUSY_JS = """() => [...document.querySelectorAll(
  '[class*="skeleton" i], [class*="spin-spinning"], [class*="spinner" i], [aria-busy="true"], .anticon-loading')]
  .some(e => e.offsetParent !== null)"""


# True once the artifact preview <img> for the named file has loaded.
IMG_JS = """(name) => [...document.images].some(i => i.complete && i.naturalWidth > 0 &&
  (decodeURIComponent(i.src).includes(name) || i.src.startsWith('blob:')))"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tracking-uri", required=True,
                   help="sqlite:///PATH of the store; artifacts are read from each run's own artifact URI")
    p.add_argument("--experiment", required=True, help="experiment name to screenshot")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNGs (created if missing)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary (default: %(default)s)")
    p.add_argument("--width", type=int, default=1600, help="viewport width (default: %(default)s)")
    p.add_argument("--height", type=int, default=1000, help="viewport height (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=120,
                   help="seconds to wait for the server, and for each page's content (default: %(default)s)")
    return p.parse_args()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri, port, out, timeout):
    db_dir = Path(uri.removeprefix("sqlite:///")).resolve().parent
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", str(db_dir / "mlruns"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    log = open(out / "mlflow_server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (out / "mlflow_server.pid").write_text(f"{proc.pid}\n")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {out / 'mlflow_server.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"mlflow server not healthy after {timeout}s")


def stop_server(proc):
    """Stop exactly the process group that start_server created (server + its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def find_runs(uri, name):
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise SystemExit(f"no experiment named {name!r} in {uri}")
    eid = exp.experiment_id
    studies = c.search_runs([eid], "tags.run_kind = 'study'", order_by=["attributes.start_time DESC"])
    if not studies:
        raise SystemExit(f"experiment {name!r} has no run tagged run_kind=study")
    parent = studies[0]
    steps = c.search_runs([eid], f"tags.run_kind = 'step' and tags.mlflow.parentRunId = '{parent.info.run_id}'",
                          order_by=["attributes.start_time ASC"])
    if not steps:
        raise SystemExit("the study run has no child run tagged run_kind=step")
    step = steps[0]
    p_files = [f.path for f in c.list_artifacts(parent.info.run_id) if not f.is_dir]
    s_files = [f.path for f in c.list_artifacts(step.info.run_id) if not f.is_dir]
    pngs = [f for f in p_files if f.endswith(".png")]
    chart = next((f for f in pngs if f.endswith("roadmap.png")), pngs[0] if pngs else None)
    weights = next((f for f in s_files if f.endswith(".safetensors")), s_files[0] if s_files else None)
    datasets = [d.dataset.name for d in step.inputs.dataset_inputs]
    return eid, parent, step, chart, weights, datasets


def shoot(ctx, url, path, texts, timeout_ms, before=None):
    """Open url in a fresh page, wait until every text is visible and no spinner shows, screenshot."""
    page = ctx.new_page()
    page.goto(url)
    for t in texts:
        page.get_by_text(t, exact=True).first.wait_for(state="visible", timeout=timeout_ms)
    if before:
        before(page)
    deadline = time.time() + timeout_ms / 1000
    while page.evaluate(BUSY_JS) and time.time() < deadline:
        page.wait_for_timeout(250)
    page.wait_for_timeout(1000)  # let images and charts paint
    page.screenshot(path=str(path))
    page.close()
    print(f"wrote {path}  ({url})")


def main():
    a = parse_args()
    from playwright.sync_api import sync_playwright

    a.out.mkdir(parents=True, exist_ok=True)
    eid, parent, step, chart, weights, datasets = find_runs(a.tracking_uri, a.experiment)
    pid, sid = parent.info.run_id, step.info.run_id
    port = a.port or free_port()
    proc = start_server(a.tracking_uri, port, a.out, a.timeout)
    base, q = f"http://127.0.0.1:{port}/#/experiments/{eid}", "?workflowType=machine_learning"
    ms = int(a.timeout * 1000)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=CHROME_ARGS)
            ctx = browser.new_context(viewport={"width": a.width, "height": a.height})
            ctx.add_init_script(INIT_JS)

            def expand_parent(page):
                row = page.locator("[role=row]", has_text=parent.info.run_name).first
                row.locator("button").filter(has=page.locator("svg")).first.click()
                page.get_by_text(step.info.run_name, exact=True).first.wait_for(state="visible", timeout=ms)
                if datasets:
                    page.get_by_text(datasets[0]).first.wait_for(state="visible", timeout=ms)
                grip = page.locator('.ag-header-cell[col-id*="Dataset"] .ag-header-cell-resize').first
                if grip.count():  # widen the Dataset column so its context tags are not cut off
                    box = grip.bounding_box()
                    page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)
                    page.mouse.down()
                    page.mouse.move(box["x"] + 260, box["y"] + box["height"] / 2, steps=10)
                    page.mouse.up()

            shoot(ctx, f"{base}/runs{q}", a.out / "mlflow_runs.png", [parent.info.run_name, "Dataset"], ms,
                  before=expand_parent)
            if chart:
                shoot(ctx, f"{base}/runs/{pid}/artifacts/{chart}{q}", a.out / "mlflow_parent_artifacts.png",
                      ["Artifacts"], ms,
                      before=lambda p: p.wait_for_function(IMG_JS, arg=Path(chart).name, timeout=ms))
            else:
                print("parent run has no PNG artifact; skipping mlflow_parent_artifacts.png")
            wait_ds = (lambda p: p.get_by_text(datasets[0]).first.wait_for(timeout=ms)) if datasets else None
            shoot(ctx, f"{base}/runs/{sid}{q}", a.out / "mlflow_step_run.png", [step.info.run_name, "Datasets"], ms,
                  before=wait_ds)
            if weights:
                shoot(ctx, f"{base}/runs/{sid}/artifacts/{weights}{q}", a.out / "mlflow_step_artifacts.png",
                      ["Artifacts", Path(weights).name], ms)
            browser.close()
    finally:
        stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
