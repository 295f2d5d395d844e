"""The only MLflow user: stores, the study's parent run and its nested step runs, datasets, artifacts, read-back.

Nothing here imports torch.
"""
from .environment import environment_tags
from .errors import TrackingUnreachable
from .readback import TrackedRun, download_artifact, load_metric_history, load_run, load_step_runs
from .runs import StepRun, Tracker, flatten
from .server import DEFAULT_PATIENCE_S
from .store import (
    DEFAULT_TRACKING_URI,
    TrackingError,
    absolute_uri,
    check_tracking_uri,
    experiment_exists,
    is_shared_server,
)

__all__ = ["DEFAULT_PATIENCE_S", "DEFAULT_TRACKING_URI", "StepRun", "TrackedRun", "Tracker", "TrackingError",
           "TrackingUnreachable", "absolute_uri", "check_tracking_uri", "download_artifact", "environment_tags",
           "experiment_exists", "flatten", "is_shared_server", "load_metric_history", "load_run", "load_step_runs"]
