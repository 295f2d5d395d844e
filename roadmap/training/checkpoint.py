"""Atomic writes of checkpoints and result files: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..errors import SpecError


class CheckpointError(SpecError):
    """A checkpoint that cannot be read, or only by running code; the message names the file."""


# What the previous version's checkpoints need beyond tensors and plain values: NumPy's rebuilders of a uint32
# array (its MT19937 state), by their NumPy 2 and NumPy 1 names. They build arrays of that one dtype, nothing else.
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct
LEGACY_NUMPY_GLOBALS = [np.dtype, type(np.dtype(np.uint32)), np.ndarray,
                        (_reconstruct, "numpy._core.multiarray._reconstruct"),
                        (_reconstruct, "numpy.core.multiarray._reconstruct")]


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


def load_checkpoint(path: Path | str) -> Any:
    """A file written by save_checkpoint, read with torch.load(weights_only=True): loading never runs code.

    Only tensors and plain values (numbers, strings, lists, tuples, dicts) load, plus NumPy uint32 arrays for
    the previous version's checkpoints; a file that pickles anything else is refused in one line naming it.
    """
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        unsafe = _unsafe_globals(path)
        if isinstance(error, pickle.UnpicklingError) and unsafe is not None:
            raise CheckpointError(f"{path} is refused: it pickles {unsafe or 'objects other than tensors'}, which "
                                  "loading could run as code; a checkpoint holds only tensors and plain values (as "
                                  "this harness writes it)") from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(error).__name__}: "
                              f"{first_line[:200]})") from None


def _unsafe_globals(path: Path | str) -> str | None:
    """'posix.system, ...': what a file would call or build beyond the allowed, read without running it ("" when
    it names nothing beyond them); None when it is not a torch checkpoint at all."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a torch zip file, or a damaged one: reported as not readable
        return None
    allowed = {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
               for entry in LEGACY_NUMPY_GLOBALS}
    names = [name for name in names if name not in allowed]
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def save_json(obj: Any, path: Path | str) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))


def load_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())
