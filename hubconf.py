"""torch.hub entry points: one per roadmap step, e.g. torch.hub.load(REPO, "kernel_7", source="local")."""
from __future__ import annotations

import dataclasses as _dataclasses
from collections.abc import Callable as _Callable

import roadmap as _roadmap  # torch.hub puts this folder on sys.path only while it imports hubconf
from roadmap.errors import SpecError as _SpecError
from roadmap.steps import list_roadmaps as _list_roadmaps
from roadmap.steps import load_roadmap as _load_roadmap

dependencies = ["torch", "timm"]

_DEFAULT_ROADMAP = "resnet50_to_convnext_t"
# Every roadmap, the default first: read once, when torch.hub imports this file.
_ROADMAPS = {name: _load_roadmap(name)
             for name in sorted(_list_roadmaps(), key=lambda name: (name != _DEFAULT_ROADMAP, name))}


class _HubError(_SpecError):
    """A torch.hub call whose keywords do not fit the entry point; the message names the valid values."""


def _roadmaps_of(step: str) -> list[str]:
    """The roadmaps that have `step`, the default roadmap first."""
    return [name for name, roadmap in _ROADMAPS.items() if step in roadmap.names()]


def _build(step: str, roadmap: str | None, weights: object, num_classes: int | None,
           width_multiplier: float | None, tracking_uri: str | None):
    if weights is None:
        spec = _load_roadmap(roadmap or _roadmaps_of(step)[0]).step(step).arch
        if width_multiplier is not None:
            spec = _dataclasses.replace(spec, width_multiplier=width_multiplier)
        return _roadmap.build_model(spec, 1000 if num_classes is None else num_classes)
    trained = _roadmap.load_trained(weights, tracking_uri=tracking_uri)
    checks = (("step", step, trained.step), ("roadmap", roadmap, trained.roadmap),
              ("num_classes", num_classes, trained.num_classes),
              ("width_multiplier", width_multiplier, trained.arch.width_multiplier))
    for key, asked, found in checks:
        if asked is not None and asked != found:
            raise _HubError(f"{key}={asked!r} is not valid with weights={str(weights)!r}, whose run has "
                           f"{key} {found!r}; load it with the entry point and keywords of that run")
    return trained.model


def _entry_point(step: str) -> _Callable:
    def entry(roadmap: str | None = None, weights: object = None, num_classes: int | None = None,
              width_multiplier: float | None = None, tracking_uri: str | None = None):
        return _build(step, roadmap, weights, num_classes, width_multiplier, tracking_uri)

    roadmaps = _roadmaps_of(step)
    entry.__name__ = entry.__qualname__ = step
    entry.__doc__ = f"""The network of roadmap step {step!r}: {_summary(_ROADMAPS[roadmaps[0]].step(step))}

    Keywords:
        roadmap: the roadmap whose step it is, one of {", ".join(roadmaps)} (default {roadmaps[0]}).
        weights: None for a randomly initialized network (train mode); or a trained run of this step,
            runs:/<run id>, its checkpoint folder or its weights.safetensors / last.pt file: then that
            run's network in eval mode (see roadmap.load_trained). A last.pt is read with
            torch.load(weights_only=True): a file that would run code when loaded is refused.
        num_classes: outputs of the classifier (default 1000; with weights, the run's).
        width_multiplier: uniform multiplier of every width (default the step's 1.0; with weights, the run's).
        tracking_uri: the MLflow store of runs:/ weights (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
    """
    return entry


def _summary(step) -> str:
    """'group large kernel; kernel_size=7 on top of move_up_dwconv' (the step files say what a step changes)."""
    changes = {**step.changes["arch"], **step.changes["recipe"]}
    if "recipe_name" in step.changes:
        changes["recipe"] = step.changes["recipe_name"]
    what = ", ".join(f"{key}={value!r}" for key, value in changes.items()) or "no change"
    base = f" on top of {step.parent}" if step.parent else ""
    return f"group {step.group!r}; {what}{base}. {' '.join(step.description.split())}".rstrip()


def _step_names() -> list[str]:
    names: list[str] = []
    for roadmap in _ROADMAPS.values():
        names += [step for step in roadmap.names() if step not in names]
    return names


for _step in _step_names():
    globals()[_step] = _entry_point(_step)
