"""Who holds a lock file: the one line a lock's holder writes into it, read by whoever waits for it."""
from __future__ import annotations

import os
import socket
import time
from typing import IO


def write_holder(handle: IO[str]) -> None:
    """Replace the locked file's text with "pid P on HOST[, SLURM job J], since TIME" (this process)."""
    handle.seek(0)
    handle.truncate()
    job = os.environ.get("SLURM_JOB_ID")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}{f', SLURM job {job}' if job else ''}, "
                 f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
