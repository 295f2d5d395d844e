"""Launching the units of a study as jobs (local processes or a SLURM array) and collecting them."""
from __future__ import annotations

from .options import StudyOptions


def check_launch(study: StudyOptions) -> None:
    """Every check of the launch that can fail before anything is submitted."""


def run_launched_study(study: StudyOptions) -> int:
    raise NotImplementedError
