"""Units run one after another in this process (or, under torchrun, in each of its processes)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...schema import Status
from .base import Executor, JobHandle, JobResult, JobStatus


class InlineExecutor(Executor):
    """`submit` runs every payload now, in order; a unit's exception propagates (this process is the study)."""

    def __init__(self, function):
        super().__init__(function)
        self._results: dict[str, Any] = {}

    def submit(self, payloads: Sequence[tuple[str, Any]]) -> None:
        for key, payload in payloads:
            self._results[key] = self.function(payload)

    def statuses(self) -> dict[str, JobStatus]:
        return {key: JobStatus(Status.FINISHED) for key in self._results}

    def result(self, key: str) -> JobResult:
        return JobResult(value=self._results[key])

    def handles(self) -> dict[str, JobHandle]:
        return {key: JobHandle("inline") for key in self._results}
