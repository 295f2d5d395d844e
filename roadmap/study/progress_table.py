"""The launcher's live table of jobs: redrawn in place on a terminal, a line per change otherwise."""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass

import click

from ..schema import Status

# In the order the summary counts them; "claimed": being trained by another process.
STATES = (Status.PENDING, Status.RUNNING, Status.REQUEUED, Status.FINISHED, Status.SKIPPED, Status.CLAIMED,
          Status.FAILED)


@dataclass(frozen=True)
class Row:
    """One unit of the launch as the table shows it."""

    label: str  # "kernel_7 seed 0"
    job_id: str  # "" before it is submitted
    state: Status  # one of STATES
    note: str = ""  # top-1, the last error line, "restarted 1 x", ...


class ProgressTable:
    """Shows the jobs' states; call `show(rows)` after every poll."""

    def __init__(self, title: str, interactive: bool | None = None):
        self.title = title
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._shown: dict[str, tuple[str, str]] = {}
        self._drawn_lines = 0

    def show(self, rows: list[Row]) -> None:
        if self.interactive:
            self._redraw(rows)
        else:
            self._log_changes(rows)

    def summary(self, rows: list[Row]) -> str:
        counts = Counter(row.state for row in rows)
        parts = [f"{counts[state]} {state}" for state in STATES if counts[state]]
        return f"{self.title}: {len(rows)} job(s), " + ", ".join(parts)

    def _redraw(self, rows: list[Row]) -> None:
        width = max((len(row.label) for row in rows), default=10)
        lines = [f"{self.summary(rows)}   [{time.strftime('%H:%M:%S')}]"]
        lines += [f"  {row.label:<{width}}  {row.job_id or '-':>12}  {row.state:<9} {row.note}" for row in rows]
        if self._drawn_lines:
            sys.stdout.write(f"\x1b[{self._drawn_lines}F\x1b[J")  # back to the table's first line, clear below
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self._drawn_lines = len(lines)

    def _log_changes(self, rows: list[Row]) -> None:
        changed = [row for row in rows if self._shown.get(row.label) != (row.state, row.job_id)]
        for row in changed:
            job = f" (job {row.job_id})" if row.job_id else ""
            note = f", {row.note}" if row.note else ""
            click.echo(f"[{time.strftime('%H:%M:%S')}] {row.label}{job}: {row.state}{note}")
            self._shown[row.label] = (row.state, row.job_id)
        if changed:
            click.echo(self.summary(rows))
