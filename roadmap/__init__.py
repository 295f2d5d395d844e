"""convnext-roadmap: the ResNet-50 -> ConvNeXt modernization study as composable steps.

Layers, bottom to top: `spec`, `schema`, `errors`, `steps`, `recipes` (what a study is made of); `models`
(the networks), `data`, `training` (the engine, no MLflow), `tracking` (the only MLflow user), `report`
(tables, statistics, figures; no torch), `study` (presets, plan, the unit of work, launchers) and `cli`.
Names are imported lazily, so that tools which only read results (the plot) never import torch.
"""
from importlib import import_module

_EXPORTS = {
    "ArchSpec": "spec", "DataSpec": "spec", "RecipeSpec": "spec", "SpecError": "errors",
    "Roadmap": "steps", "RoadmapError": "steps", "Step": "steps", "list_roadmaps": "steps", "load_roadmap": "steps",
    "build_model": "models.network",
    "Complexity": "models.complexity", "count_complexity": "models.complexity", "arch_complexity": "models.complexity",
    "load_trained": "trained", "TrainedModel": "trained",
}
# Subpackages and modules reachable as attributes (roadmap.interop is the public alias of roadmap.models.interop).
_MODULES = {"interop", "data", "models", "training", "tracking", "report", "study", "cli", "spec", "schema", "steps",
            "recipes", "predictions", "trained", "export"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'roadmap' has no attribute {name!r}")
