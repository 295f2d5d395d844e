"""The one table a study's files, terminal summary and figures are made from, whoever draws them.

The study's end (roadmap.study.collect) and `plot_roadmap.py` both call `report_summary` on the same runs, so
their figures are the same figures: results.study_summary, with every variant's throughput repeats joined on
(roadmap.report.repeats). roadmap.csv holds those columns too, so that a figure redrawn from it is the same.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..variants import StudyPlan
from .repeats import REPEAT_COLUMNS, TEXT_COLUMNS, load_repeats, with_repeats
from .results import read_summary_csv, study_summary


def report_summary(tracking_uri: str | None, experiment: str, plan: StudyPlan,
                   runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """study_summary of the plan's runs, with REPEAT_COLUMNS; `runs`: the experiment's load_runs table if known."""
    summary = study_summary(tracking_uri, experiment, plan, runs=runs)
    return with_repeats(summary, load_repeats(tracking_uri, experiment, plan))


def read_report_csv(path: Path | str) -> pd.DataFrame:
    """A roadmap.csv as report_summary wrote it: the checked summary columns, and the repeat columns it holds."""
    summary = read_summary_csv(path)
    header = pd.read_csv(path, nrows=0).columns
    present = [column for column in REPEAT_COLUMNS if column in header]
    if not present:
        return summary
    extra = pd.read_csv(path, usecols=present, dtype={column: str for column in TEXT_COLUMNS})
    for column in TEXT_COLUMNS:
        if column in extra:
            extra[column] = extra[column].fillna("")
    return pd.concat([summary, extra], axis=1)
