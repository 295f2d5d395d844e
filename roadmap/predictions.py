"""Per-image predictions of one run on its validation split, as a small CSV file.

Format of `predictions.csv`: a CSV with a header, one row per validation image, sorted by `index` ascending.
Columns `index,label,pred_1,...,pred_k`, k = min(5, number of classes): `index` is the image's position in
the validation split (0..n-1, unique), `label` its true class, `pred_1..pred_k` the k predicted classes, best
first. Every value is a non-negative integer; classes are the data set's label indices.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import SpecError

PREDICTION_COLUMNS = ("index", "label", "pred_1", "pred_2", "pred_3", "pred_4", "pred_5")
PREDICTIONS_FILE = "predictions.csv"
MAX_K = len(PREDICTION_COLUMNS) - 2


class PredictionsError(SpecError):
    """Predictions that cannot be read or compared; the one-line message says which and what is wrong."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays has no single truth value
class Predictions:
    """One run's predictions: image index and true class per image, and its top-k predicted classes."""

    index: np.ndarray  # int64 (n,), validation image index in the split, strictly ascending
    label: np.ndarray  # int64 (n,), true class
    top_k: np.ndarray  # int64 (n, k), predicted classes, best first; k = min(5, classes)

    def __post_init__(self) -> None:
        for name in ("index", "label", "top_k"):
            object.__setattr__(self, name, _as_int64(getattr(self, name), name))
        problem = _shape_problem(self.index, self.label, self.top_k)
        if problem:
            raise PredictionsError(problem)

    @property
    def k(self) -> int:
        return self.top_k.shape[1]

    def correct(self) -> np.ndarray:
        """bool (n,): whether the top-1 prediction is the true class."""
        return self.top_k[:, 0] == self.label

    def top1(self) -> float:
        """Top-1 accuracy, % of the images."""
        return 100.0 * float(self.correct().mean())


def _as_int64(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise PredictionsError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _shape_problem(index: np.ndarray, label: np.ndarray, top_k: np.ndarray) -> str:
    """What is wrong with the arrays, or ''."""
    if index.ndim != 1 or label.shape != index.shape:
        return f"index and label must be 1-D of one length, got shapes {index.shape} and {label.shape}"
    if top_k.ndim != 2 or top_k.shape[0] != len(index) or not 1 <= top_k.shape[1] <= MAX_K:
        return f"top_k must have shape (n={len(index)}, k) with 1 <= k <= {MAX_K}, got {top_k.shape}"
    if len(index) == 0:
        return "no images"
    for name, array in (("index", index), ("label", label), ("top_k", top_k)):
        if array.min() < 0:
            return f"{name} holds a negative value ({array.min()})"
    unordered = np.flatnonzero(np.diff(index) <= 0)
    if len(unordered):
        at = unordered[0]
        return f"index must be strictly ascending (unique, sorted), but {index[at]} is followed by {index[at + 1]}"
    return ""


def write_predictions(path: str | os.PathLike, predictions: Predictions) -> None:
    """Write `predictions` as the CSV described in the module docstring (columns pred_1..pred_k only)."""
    columns = PREDICTION_COLUMNS[:2 + predictions.k]
    table = np.column_stack([predictions.index, predictions.label, predictions.top_k])
    with open(path, "w", newline="") as file:
        np.savetxt(file, table, fmt="%d", delimiter=",", header=",".join(columns), comments="")


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate a predictions CSV; PredictionsError names the file and what is wrong in it.

    A missing or unreadable file raises the usual OSError.
    """
    with open(path, newline="") as file:
        lines = file.read().splitlines()
    try:
        table = _parse(lines)
        return Predictions(index=table[:, 0], label=table[:, 1], top_k=table[:, 2:])
    except PredictionsError as error:
        raise PredictionsError(f"{path}: {error}") from None


def _parse(lines: list[str]) -> np.ndarray:
    """The file's values as an int64 (n, 2 + k) table, after checking header and cells."""
    if not lines:
        raise PredictionsError("empty file, expected a header")
    columns = _header_columns(lines[0])
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(columns):
            raise PredictionsError(f"line {number}: {len(cells)} values, expected {len(columns)}")
        for column, cell in zip(columns, cells):
            if not (cell.isascii() and cell.isdigit()):
                raise PredictionsError(f"line {number}, column {column}: {cell!r} is not a non-negative integer")
        rows.append([int(cell) for cell in cells])
    if not rows:
        raise PredictionsError("no images (a header only)")
    return np.array(rows, dtype=np.int64)


def _header_columns(header: str) -> tuple[str, ...]:
    columns = tuple(cell.strip() for cell in header.split(","))
    for column in PREDICTION_COLUMNS[:3]:
        if column not in columns:
            raise PredictionsError(f"missing column {column!r} in header {header!r}")
    if columns != PREDICTION_COLUMNS[:len(columns)]:
        expected = ",".join(PREDICTION_COLUMNS[:3]) + "[,pred_2..pred_5]"
        raise PredictionsError(f"header {header!r} is not {expected!r}")
    return columns


def aligned_correct(a: Predictions, b: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 correctness (bool) of `a` and of `b` over the same images, in index order.

    Raises PredictionsError unless both cover the same image indices with the same true labels.
    """
    if not np.array_equal(a.index, b.index):
        only_a = len(np.setdiff1d(a.index, b.index))
        only_b = len(np.setdiff1d(b.index, a.index))
        raise PredictionsError(f"not the same validation set: {len(a.index)} vs {len(b.index)} images, "
                               f"{only_a} only in the first, {only_b} only in the second")
    differ = np.flatnonzero(a.label != b.label)
    if len(differ):
        raise PredictionsError(f"not the same validation set: {len(differ)} images have different labels, "
                               f"first image {a.index[differ[0]]}")
    return a.correct(), b.correct()
