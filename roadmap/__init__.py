"""convnext-roadmap: the ResNet-50 -> ConvNeXt modernization study as composable steps.

Names are imported lazily, so that tools which only read results (the plot) never import torch.
"""
from importlib import import_module

_EXPORTS = {
    "ArchSpec": "spec", "DataSpec": "spec", "RecipeSpec": "spec", "SpecError": "spec",
    "Roadmap": "steps", "RoadmapError": "steps", "Step": "steps", "list_roadmaps": "steps", "load_roadmap": "steps",
    "build_model": "model",
    "Complexity": "complexity", "count_complexity": "complexity", "arch_complexity": "complexity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in {"interop", "data", "engine", "tracking", "results", "plot", "benchmark", "presets", "sizes"}:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'roadmap' has no attribute {name!r}")
