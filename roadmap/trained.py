"""`load_trained(uri)`: the trained network of a step run, from MLflow (`runs:/<id>`), its folder, or a file."""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch
from torch import nn

from .errors import SpecError
from .models.network import build_model
from .schema import FINAL_RESULT, LAST_CHECKPOINT, Artifact, Metric, Tag
from .spec import ArchSpec, replace_checked

__all__ = ["TrainedModel", "TrainedModelError", "load_trained"]

VALID_FORMS = ("runs:/<run id>, a checkpoint folder (with config.json and weights.safetensors or last.pt), "
               "or a weights.safetensors / last.pt file with config.json beside it")
_RUN_URI = re.compile(r"^runs:/+([0-9A-Za-z_-]+)/?$")


class TrainedModelError(SpecError):
    """A source of trained weights that cannot be loaded; the message names it and the valid forms."""


@dataclass(frozen=True)
class TrainedModel:
    """A trained network of the roadmap and what its run recorded."""

    model: nn.Module  # a RoadmapNet in eval mode, on the CPU
    arch: ArchSpec
    num_classes: int
    step: str  # "" when unknown
    roadmap: str  # "" when unknown
    top1: float  # validation top-1 (%) of the last epoch; NaN when unknown
    top1_best: float  # NaN when unknown
    source: str  # the URI or path it was loaded from


def load_trained(uri: str | os.PathLike, *, tracking_uri: str | None = None) -> TrainedModel:
    """The network of a finished step run, its weights loaded strictly, in eval mode on the CPU.

    `uri` is `runs:/<run id>` (read from `tracking_uri`; None: $MLFLOW_TRACKING_URI, else MLflow's
    default sqlite:///mlflow.db), a checkpoint folder, or a weights.safetensors / last.pt file. A folder
    or a file needs the run's config.json beside the weights, which a study writes there.
    """
    source = os.fspath(uri)
    if source.startswith("runs:"):
        return _from_run(source, tracking_uri)
    if source.startswith("file:"):
        path = Path(unquote(urlparse(source).path))
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", source):  # one letter would be a Windows drive
        raise _bad_form(source)
    else:
        path = Path(source).expanduser()
    return _from_path(path, source)


def _bad_form(source: str) -> TrainedModelError:
    return TrainedModelError(f"source {source!r} is not valid; valid forms: {VALID_FORMS}")


def _from_run(source: str, tracking_uri: str | None) -> TrainedModel:
    from .tracking import check_tracking_uri, download_artifact, load_run
    from .tracking.store import store_is_absent

    match = _RUN_URI.match(source)
    if not match:
        raise _bad_form(source)
    run_id = match.group(1)
    uri = check_tracking_uri(tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI"))
    if store_is_absent(uri):
        raise TrainedModelError(f"tracking store {uri!r} does not exist, so run {run_id!r} cannot be read; "
                                "pass the tracking URI the study used (--tracking-uri / tracking_uri=)")
    run = load_run(uri, run_id)
    with tempfile.TemporaryDirectory(prefix="roadmap-run-") as folder:
        files = {}
        for name in (Artifact.WEIGHTS, Artifact.CONFIG):
            files[name] = download_artifact(uri, run_id, name, Path(folder))
            if files[name] is None:
                why = " (only a finished run has weights)" if name == Artifact.WEIGHTS else ""
                raise TrainedModelError(f"run {run_id!r} in {uri!r} has no artifact {name!r}{why}; "
                                        f"load a finished step run")
        config = _read_config(files[Artifact.CONFIG])
        state_dict = _read_weights(files[Artifact.WEIGHTS])
    metrics = run.metrics
    return _assemble(state_dict, config, source, top1=metrics.get(Metric.TOP1, math.nan),
                     top1_best=metrics.get(Metric.TOP1_BEST, math.nan),
                     step=run.tags.get(Tag.STEP, config.get("step", "")),
                     roadmap=run.tags.get(Tag.ROADMAP, config.get("roadmap", "")))


def _from_path(path: Path, source: str) -> TrainedModel:
    if path.is_dir():
        folder = path
        weights = path / Artifact.WEIGHTS
        if not weights.is_file():
            weights = path / LAST_CHECKPOINT
        if not weights.is_file():
            raise TrainedModelError(f"folder {source!r} has neither {Artifact.WEIGHTS} nor {LAST_CHECKPOINT}; "
                                    f"valid forms: {VALID_FORMS}")
    elif path.is_file():
        folder, weights = path.parent, path
    else:
        raise TrainedModelError(f"source {source!r} does not exist; valid forms: {VALID_FORMS}")
    config_path = folder / Artifact.CONFIG
    if not config_path.is_file():
        raise TrainedModelError(f"{Artifact.CONFIG} is missing next to {weights} (it names the architecture); "
                                "load the run from MLflow with runs:/<run id> instead")
    config = _read_config(config_path)
    if weights.suffix == ".safetensors":
        state_dict = _read_weights(weights)
        top1, top1_best = _final_accuracy(folder / FINAL_RESULT)
    elif weights.suffix == ".pt":
        state_dict, top1, top1_best = _read_checkpoint(weights)
    else:
        raise TrainedModelError(f"file {source!r} is not valid; give a .safetensors or .pt file, "
                                f"valid forms: {VALID_FORMS}")
    return _assemble(state_dict, config, source, top1=top1, top1_best=top1_best,
                     step=str(config.get("step", "")), roadmap=str(config.get("roadmap", "")))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TrainedModelError(f"{path} cannot be read as JSON ({type(error).__name__}); "
                                "it should be a run's config.json") from None
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise TrainedModelError(f"{path} has no 'arch' table; it should be a run's config.json")
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as error:
        raise TrainedModelError(f"{path} is not a safetensors file ({str(error).splitlines()[0]})") from None


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], float, float]:
    """The model of a last.pt, and the top-1 of its last and best epoch (the accuracy of these very weights).

    Read with torch.load(weights_only=True): a file that pickles anything but tensors and plain values is
    refused before any of it runs (roadmap.training.checkpoint.load_checkpoint).
    """
    from .training.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        raise TrainedModelError(str(error)) from None
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict) or not all(isinstance(value, torch.Tensor) for value in model.values()):
        raise TrainedModelError(f"{path} has no 'model' state dict; give a last.pt written by the training engine")
    history = state.get("history", [])
    accuracies = [float(record.get("val_top1", math.nan)) for record in history if isinstance(record, dict)]
    finite = [value for value in accuracies if math.isfinite(value)]
    return model, (accuracies[-1] if accuracies else math.nan), (max(finite) if finite else math.nan)


def _final_accuracy(path: Path) -> tuple[float, float]:
    """top1 and top1_best of a final.json; NaN for both when there is none."""
    if not path.is_file():
        return math.nan, math.nan
    from .training.result import TrainResult

    try:
        result = TrainResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TrainedModelError(f"{path} is not a run's final.json ({type(error).__name__}: {error})") from None
    return float(result.top1), float(result.top1_best)


def _assemble(state_dict: dict[str, torch.Tensor], config: dict[str, Any], source: str, *, top1: float,
              top1_best: float, step: str, roadmap: str) -> TrainedModel:
    arch_table = {key: tuple(v) if isinstance(v, list) else v for key, v in config["arch"].items()}
    arch = replace_checked(ArchSpec(), arch_table, f"{source}: config.json [arch]")
    classifier = state_dict.get("head.fc.weight")
    if classifier is None or classifier.dim() != 2:
        raise TrainedModelError(f"weights of {source!r} have no 'head.fc.weight' matrix; not a roadmap network")
    num_classes = int(classifier.shape[0])
    model = build_model(arch, num_classes)
    _check_fits(model.state_dict(), state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return TrainedModel(model=model.eval(), arch=arch, num_classes=num_classes, step=step, roadmap=roadmap,
                        top1=float(top1), top1_best=float(top1_best), source=source)


def _check_fits(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str) -> None:
    """One line naming what does not fit, instead of load_state_dict's many."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    wrong = [f"{key} {tuple(given[key].shape)} (needs {tuple(tensor.shape)})"
             for key, tensor in expected.items() if key in given and given[key].shape != tensor.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(items)} {what} ({', '.join(items[:2])}{', ...' if len(items) > 2 else ''})"
                 for what, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", wrong)) if items]
        raise TrainedModelError(f"weights of {source!r} do not fit the network its config.json describes: "
                                f"{'; '.join(parts)}")
