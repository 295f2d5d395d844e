"""What every run records about where it ran: the git revision and the library versions (no torch import)."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path


def environment_tags() -> dict[str, str]:
    """Git revision and library versions, for the tags of every run (no torch import)."""
    tags = {"git_revision": _git_revision(), "python_version": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "mlflow"):
        try:
            tags[f"{package}_version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[f"{package}_version"] = "unknown"
    return tags


def _git_revision() -> str:
    """HEAD of the repository holding this package, "+dirty" when tracked files differ; "unknown" outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")

