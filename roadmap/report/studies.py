"""The studies of an experiment as MLflow holds them: each parent run and the plan it logged."""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError
from ..schema import Artifact, RunKind, Tag
from ..variants import StudyPlan


class StudyNotFound(SpecError):
    """No study (parent run with a plan) matches; the message says which ones there are."""


@dataclass(frozen=True)
class TrackedStudy:
    """A study's parent run and its plan."""

    run_id: str
    started: str  # local time, "2026-12-02 19:40"
    plan: StudyPlan

    def describe(self) -> str:
        plan = self.plan
        return (f"study {self.run_id} ({plan.roadmap.name}, {plan.ablation} up to {plan.upto}, {len(plan.variants)} "
                f"variants, seeds {','.join(map(str, plan.seeds))}, preset {plan.preset}, started {self.started})")


def find_study(tracking_uri: str | None, experiment: str, study_run: str | None = None) -> TrackedStudy:
    """The newest study of the experiment that logged a plan of this version, or the one of `study_run`."""
    from ..tracking import download_artifact, load_step_runs

    parents = [run for run in load_step_runs(tracking_uri, experiment, RunKind.STUDY)]  # newest first
    if study_run is not None:
        parents = [run for run in parents if run.run_id == study_run]
        if not parents:
            raise StudyNotFound(f"--study-run {study_run!r} is not a study of experiment {experiment!r}; "
                                f"{_listing(tracking_uri, experiment)}")
    folder = Path(tempfile.mkdtemp(prefix="roadmap-plan-"))
    for run in parents:
        path = download_artifact(tracking_uri, run.run_id, Artifact.PLAN, folder / run.run_id)
        if path is None:
            continue
        try:
            plan = StudyPlan.from_json(path.read_text())
        except SpecError:
            continue
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.start_time / 1000))
        return TrackedStudy(run.run_id, started, plan)
    which = f"study run {study_run!r}" if study_run else f"experiment {experiment!r}"
    raise StudyNotFound(f"{which} holds no study plan of this version (plan.json on a parent run); run "
                        "run_ablation.py first, or draw from --csv PATH or --paper")


def _listing(tracking_uri: str | None, experiment: str) -> str:
    from ..tracking import load_step_runs

    runs = load_step_runs(tracking_uri, experiment, RunKind.STUDY)[:10]
    if not runs:
        return "it has no study runs"
    return "its newest study runs: " + ", ".join(f"{run.run_id} ({run.tags.get(Tag.ABLATION, '?')})" for run in runs)
