"""Shared fixtures: the project's roadmaps and a CLI runner in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
