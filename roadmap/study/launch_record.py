"""The launch folder's record of a study's jobs, so that a later invocation re-attaches instead of resubmitting."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..training.checkpoint import save_json

RECORD_FILE = "launch.json"


@dataclass
class JobRecord:
    """One unit's job: its scheduler id (SLURM "array_task", or a local controller's pid) and its GPUs."""

    job_id: str
    variant: str
    seed: int
    # The GPUs a local job sees: they stay its own when a later launcher re-attaches.
    gpus: tuple[int, ...] = ()
    submitted_at: float = field(default_factory=time.time)


@dataclass
class LaunchRecord:
    """What a launch of one study (experiment) submitted: its launcher, its parent run, the job of each unit."""

    launcher: str
    study_run_id: str | None = None
    jobs: dict[str, JobRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path, launcher: str) -> LaunchRecord:
        """The record in `folder`, or an empty one; a record of another launcher is a one-line SpecError."""
        path = folder / RECORD_FILE
        if not path.exists():
            return cls(launcher=launcher)
        try:
            raw = json.loads(path.read_text())
            record = cls(launcher=raw["launcher"], study_run_id=raw.get("study_run_id"),
                         jobs={key: JobRecord(**job | {"gpus": tuple(job.get("gpus", ()))})
                               for key, job in raw.get("jobs", {}).items()})
        except (ValueError, KeyError, TypeError) as error:
            raise SpecError(f"launch record {path} is unreadable ({error}); remove it to start the launch afresh "
                            "(finished runs are still skipped)") from None
        if record.launcher != launcher:
            raise SpecError(f"{path} records a --launcher {record.launcher} launch of this study, not {launcher}; "
                            f"rerun with --launcher {record.launcher} to re-attach, or remove the file")
        return record

    def save(self, folder: Path) -> None:
        """Written atomically: a launcher killed while writing leaves the previous record."""
        save_json({"launcher": self.launcher, "study_run_id": self.study_run_id,
                   "jobs": {key: asdict(job) for key, job in self.jobs.items()}}, folder / RECORD_FILE)
