"""The package's layers: what may import what (docs/DESIGN.md), read from every module's source."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "roadmap"
# The bottom: what a study is made of. They import nothing but each other and the standard library, numpy.
BOTTOM = {"roadmap.errors", "roadmap.schema", "roadmap.spec", "roadmap.steps", "roadmap.recipes", "roadmap.holder",
          "roadmap.predictions", "roadmap.interop", "roadmap.variants"}
LAYERS = ("models", "data", "training", "tracking", "report", "study", "cli")
HEAVY = {"torch", "torchvision", "timm", "mlflow", "matplotlib", "pandas", "scipy", "submitit", "safetensors"}
# module prefix -> what it must never import (subpackages of roadmap by their short name, or third-party roots).
FORBIDDEN = {
    "roadmap.models": {"data", "training", "tracking", "report", "study", "cli", "mlflow", "matplotlib", "pandas",
                       "submitit"},
    "roadmap.data": {"models", "training", "tracking", "report", "study", "cli", "mlflow", "matplotlib", "submitit"},
    "roadmap.training": {"data", "tracking", "report", "study", "cli", "mlflow", "matplotlib", "pandas", "submitit"},
    "roadmap.tracking": {"models", "data", "training", "report", "study", "cli", "torch", "torchvision", "timm",
                         "matplotlib", "safetensors", "submitit"},
    "roadmap.report": {"models", "data", "training", "study", "cli", "torch", "torchvision", "timm", "submitit"},
    "roadmap.study.executors": {"models", "data", "training", "tracking", "report", "cli", "mlflow", "torch"},
    "roadmap.study": {"cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute, at any depth of the file (lazy imports inside functions too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def short(imported: str) -> str:
    """'roadmap.tracking.runs' -> 'tracking', 'mlflow.entities' -> 'mlflow'."""
    parts = imported.split(".")
    return parts[1] if parts[0] == "roadmap" and len(parts) > 1 else parts[0]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_no_module_imports_across_its_layers_rules(path):
    name = module_name(path)
    rules = [forbidden for prefix, forbidden in FORBIDDEN.items() if name == prefix or name.startswith(prefix + ".")]
    used = {short(imported) for imported in imports(path)}
    for forbidden in rules:
        assert not used & forbidden, f"{name} imports {sorted(used & forbidden)}"
    if name in BOTTOM:
        allowed = {"roadmap", "errors", "schema", "spec", "steps", "recipes", "predictions", "models", "numpy",
                   "variants"}
        layer_imports = {short(imported) for imported in imports(path)
                         if imported.startswith("roadmap.") or short(imported) in HEAVY | set(LAYERS)}
        assert layer_imports <= allowed, f"{name} (bottom layer) imports {sorted(layer_imports - allowed)}"


def test_every_module_is_in_a_layer_and_small():
    for path in MODULES:
        name = module_name(path)
        top = {"roadmap", "roadmap.trained", "roadmap.export", "roadmap.timm_models"}
        assert name in BOTTOM | top or short(name) in LAYERS, name
        lines = len(path.read_text().splitlines())
        assert lines <= 420, f"{name} has {lines} lines; split it"


def test_the_rules_catch_a_forbidden_import(tmp_path):
    """The parser sees a lazy, relative import inside a function: the rules can fail."""
    module = PACKAGE / "report" / "_probe_for_test.py"
    module.write_text("def f():\n    from ..training import engine\n    import torch\n")
    try:
        used = {short(imported) for imported in imports(module)}
    finally:
        module.unlink()
    assert {"training", "torch"} <= used & FORBIDDEN["roadmap.report"]


@pytest.mark.parametrize("module", ["roadmap.report.plot", "roadmap.report.results", "roadmap.tracking"])
def test_reading_results_never_imports_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0, f"{module} imported torch"
