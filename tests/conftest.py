"""Shared fixtures: the project's roadmaps and a CLI runner in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# pytest-xdist runs the selections in parallel (addopts: -n auto --dist loadgroup). Each file stays on one worker,
# so its module fixtures (a study trained once, read by many tests) run once, and the SLURM tests (one file) take
# the cluster's few CPUs one at a time. The two files that use the CI's tracking server share a worker:
# test_tracking_server.py restarts it.
SHARED_SERVICE = {"test_tracking.py": "tracking-server", "test_tracking_server.py": "tracking-server"}
MAX_WORKERS = 8  # each worker holds a torch process (~0.5 GB) and the files are few

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The CLI subprocesses the tests start size their torch threads to the whole machine; beside other workers,
    # a second OpenMP thread only waits at barriers for a descheduled one.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(SHARED_SERVICE.get(item.path.name, item.path.name)))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run small tensors, where a second OpenMP thread only adds barrier waits on a busy 2-core box."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def roadmap_t():
    from roadmap import load_roadmap

    return load_roadmap("resnet50_to_convnext_t")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run `python run_ablation.py ARGS` (or another script named first) as a user would."""
    script = args[0] if args and args[0].endswith(".py") else "run_ablation.py"
    rest = args[1:] if args and args[0].endswith(".py") else args
    return subprocess.run(
        [sys.executable, str(REPO / script), *rest],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


@pytest.fixture(scope="session")
def cli():
    """`cli(*args)` runs run_ablation.py (or the script named first) and returns the CompletedProcess."""
    return run_cli
