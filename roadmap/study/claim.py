"""A claim on one (step, seed, configuration): the one process training it, whoever launched it."""
from __future__ import annotations

import fcntl
from pathlib import Path

from ..holder import write_holder


class Claim:
    """An exclusive, non-blocking flock on `<checkpoint folder>.claim`, held while the run trains.

    Two jobs or two launches of the same study that reach the same (step, seed, configuration) see each
    other here; the second one skips it. The kernel releases the lock when its holder dies (a kill, a
    preemption, a node failure on a shared file system with working locks), so no claim goes stale.
    """

    def __init__(self, checkpoint_folder: Path):
        self.path = checkpoint_folder.with_name(checkpoint_folder.name + ".claim")
        self._file = None

    def acquire(self) -> bool:
        """True when this process now holds the claim; False when another one does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open as long as the claim
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        write_holder(handle)
        self._file = handle
        return True

    def holder(self) -> str:
        """Who holds (or last held) the claim, as its holder wrote it."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
