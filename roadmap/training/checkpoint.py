"""Atomic writes of checkpoints and result files: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def atomic_write(path: Path | str, write: Callable[[BinaryIO], Any]) -> None:
    """`write(file)` into a temporary file in the same folder, fsync it, then os.replace it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes it owner-only
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the folder entry is on disk.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_checkpoint(state: dict[str, Any], path: Path | str) -> None:
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    # Our own file; it holds numpy and python RNG states, which weights_only=True refuses.
    return torch.load(path, map_location="cpu", weights_only=False)


def save_json(obj: Any, path: Path | str) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))


def load_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())
