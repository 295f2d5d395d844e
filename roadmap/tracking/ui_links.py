"""Links into MLflow's web UI that open on what a researcher came for, as MLflow 3.17's UI reads them.

Checked in headless Chromium against MLflow 3.17.2 (tools/mlflow_screenshots.py):
- an experiment or a run opened without `workflowType=machine_learning` in its URL lands in the GenAI view
  (a run's page under "Evaluations"); with it, in the model-training view. No experiment tag changes that.
- the runs table keeps its columns and sort in the browser (localStorage) or in a *saved view*: an experiment
  tag `mlflow.sharedViewState.<key>` holding {"name", "createdAt", "updatedAt", "state"}, the state a JSON
  string, which the UI's own "Views > Save as new view" writes and a URL's `viewStateShareKey=<key>` opens.
- a saved view restores the search filter, the sort, the columns and their order; it never restores which
  parent runs are expanded (the UI leaves that out of saved views), and the runs nest under their parent
  whenever the table is sorted by creation time. Filtered to the step runs and sorted by end time, they are
  listed flat, each with its columns.
"""
from __future__ import annotations

import json
import time

from ..schema import Metric, RunKind, Tag

# Opens the model-training view of MLflow 3.x instead of its GenAI view.
WORKFLOW_QUERY = "workflowType=machine_learning"
# The experiment tag prefix MLflow's UI reads saved views from, and the key of the view this project saves.
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
STEP_RUNS_VIEW = "roadmap-step-runs"
# The columns of that view, in order (MLflow's canonical keys: type.`name`).
STEP_RUNS_COLUMNS = (
    f"tags.`{Tag.STEP}`", f"tags.`{Tag.SEED}`", f"metrics.`{Metric.TOP1}`", f"metrics.`{Metric.DELTA_TOP1}`",
    f"metrics.`{Metric.DELTA_CI_LOW}`", f"metrics.`{Metric.DELTA_CI_HIGH}`", f"tags.`{Tag.DELTA_TEST}`",
    f"tags.`{Tag.BASELINE}`", f"tags.`{Tag.ABLATION}`", "attributes.`Dataset`",
)


def runs_view_path(experiment_id: str) -> str:
    """The experiment's runs table, opened on the saved view of its step runs (step_runs_view)."""
    return f"#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}&viewStateShareKey={STEP_RUNS_VIEW}"


def run_path(experiment_id: str, run_id: str) -> str:
    """A run's page, in the model-training view."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_QUERY}"


def step_runs_view(now_ms: int | None = None) -> tuple[str, str]:
    """(experiment tag, value) of the saved view "step runs": every step run of the experiment listed flat in the
    order they finished, with its step, seed, top-1 and Δ (with interval and test) as the first columns."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    state = {
        "searchFilter": f"tags.{Tag.RUN_KIND} = '{RunKind.STEP}'",
        "orderByKey": "attributes.end_time", "orderByAsc": True,  # not start_time: that nests them under parents
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": list(STEP_RUNS_COLUMNS), "columnOrder": list(STEP_RUNS_COLUMNS),
    }
    envelope = {"name": "step runs: top-1 and Δ", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return f"{SAVED_VIEW_PREFIX}{STEP_RUNS_VIEW}", json.dumps(envelope)
