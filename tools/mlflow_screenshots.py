"""Screenshot a roadmap study as the MLflow 3.x web UI shows it, opened from the links the study prints.

Starts ``mlflow server`` on a free loopback port for a sqlite tracking store, opens it in headless Chromium
(via Playwright) in a fresh browser profile, and writes to --out:

  mlflow_runs.png              the runs view the study's last lines link to: the saved view "step runs" (every
                               step run flat, with step, seed, top1, delta_top1 and its interval as columns)
  mlflow_runs_nested.png       what to click where a saved view cannot help: the plain runs view with the study's
                               parent run expanded (its ⊞ button, outlined in red) into its step runs
  mlflow_parent_artifacts.png  the study (parent) run's Artifacts tab with the roadmap chart selected
  mlflow_step_run.png          a step run's page (its link from the parent's description): metrics, datasets, tags
  mlflow_step_artifacts.png    that step run's Artifacts tab with the weights file selected

Every page is opened from a URL as the project prints or stores it (roadmap.tracking.ui_links), with nothing
set in the browser beforehand except dismissing MLflow's first-visit pop-ups: the screenshots show what those
links open. The parent run is the newest run tagged run_kind=study that has child runs tagged run_kind=step (a
rerun that skipped every run has none), the step run its first child. The server runs in its own process
group; its pid and log go to a temporary folder (printed on error) and that group is stopped at the end, on
error too.

Needs: Debian's chromium (apt-get install -y chromium fonts-dejavu-core) and the docs extra
(pip install -e ".[docs]": Playwright; do NOT run ``playwright install``, the Debian binary is used).

Usage:
  python tools/mlflow_screenshots.py --tracking-uri sqlite:///mlflow.db --experiment resnet50_to_convnext_t --out docs
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's own link builders
from roadmap.tracking.ui_links import run_path, runs_view_path  # noqa: E402

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Seeded before the app loads: only MLflow's first-visit pop-ups (assistant panel, onboarding) are dismissed; the
# workflow type (GenAI or model training) is left to the URL, as a reader's browser would.
INIT_JS = """try {
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
HIGHLIGHT = "3px solid #d0021b"


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
    for parent in studies:  # the newest study that trained runs (a rerun that skipped them all has none)
        steps = c.search_runs([eid], f"tags.run_kind = 'step' and tags.mlflow.parentRunId = '{parent.info.run_id}'",
                              order_by=["attributes.start_time ASC"])
        if steps:
            break
    else:
        raise SystemExit(f"experiment {name!r} has no run tagged run_kind=study with a child tagged run_kind=step")
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
    logs = Path(tempfile.mkdtemp(prefix="mlflow-screenshots-"))  # the server's log and pid: not among the PNGs
    proc = start_server(a.tracking_uri, port, logs, a.timeout)
    base = f"http://127.0.0.1:{port}/"
    ms = int(a.timeout * 1000)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=CHROME_ARGS)

            def context():  # a fresh profile per page: nothing remembered from another page
                ctx = browser.new_context(viewport={"width": a.width, "height": a.height})
                ctx.add_init_script(INIT_JS)
                return ctx

            shoot(context(), base + runs_view_path(eid), a.out / "mlflow_runs.png",
                  [step.info.run_name, "delta_top1"], ms)

            def expand_parent(page):
                row = page.locator(f"[role=row][row-id='{pid}']").first  # not by name: reruns share it
                button = row.locator("button").filter(has=page.locator("svg")).first
                button.click()
                page.get_by_text(step.info.run_name, exact=True).first.wait_for(state="visible", timeout=ms)
                button.evaluate(f"b => b.style.outline = '{HIGHLIGHT}'")
                page.get_by_role("button", name="Views").evaluate(f"b => b.style.outline = '{HIGHLIGHT}'")

            plain = base + runs_view_path(eid).split("&viewStateShareKey=")[0]
            shoot(context(), plain, a.out / "mlflow_runs_nested.png", [parent.info.run_name], ms,
                  before=expand_parent)
            if chart:
                shoot(context(), base + run_path(eid, pid).replace("?", f"/artifacts/{chart}?"),
                      a.out / "mlflow_parent_artifacts.png", ["Artifacts"], ms,
                      before=lambda p: p.wait_for_function(IMG_JS, arg=Path(chart).name, timeout=ms))
            else:
                print("parent run has no PNG artifact; skipping mlflow_parent_artifacts.png")
            wait_ds = (lambda p: p.get_by_text(datasets[0]).first.wait_for(timeout=ms)) if datasets else None
            shoot(context(), base + run_path(eid, sid), a.out / "mlflow_step_run.png",
                  [step.info.run_name, "Datasets"], ms, before=wait_ds)
            if weights:
                shoot(context(), base + run_path(eid, sid).replace("?", f"/artifacts/{weights}?"),
                      a.out / "mlflow_step_artifacts.png", ["Artifacts", Path(weights).name], ms)
            browser.close()
    finally:
        stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
