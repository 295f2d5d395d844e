"""Read a roadmap's step files, validate them, and fold their deltas into a chain of full specs."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recipes import get_recipe
from .spec import ArchSpec, RecipeSpec, SpecError, replace_checked


def builtin_steps_dir() -> Path:
    """The roadmaps this project ships: `steps/` of a source checkout, or the copy an installed wheel carries."""
    package = Path(__file__).resolve().parent
    installed = package / "roadmaps"  # pyproject.toml maps the repository's steps/ here in a wheel
    return installed if installed.is_dir() else package.parent / "steps"


DEFAULT_STEPS_DIR = builtin_steps_dir()
ROADMAP_FILE = "roadmap.toml"

STEP_KEYS = {"name", "group", "adopted", "parent", "description", "recipe", "recipe_overrides", "arch", "paper"}
REQUIRED_STEP_KEYS = ("name", "group", "adopted")
PAPER_KEYS = {"top1", "top1_std", "gflops", "fig2_top1", "fig2_gflops", "note"}
ROADMAP_KEYS = {"title", "description", "dataset", "paper_table", "reference"}
REFERENCE_KEYS = {"name", "top1", "gflops", "params_m"}


class RoadmapError(SpecError):
    """A roadmap or step that cannot be loaded; the message names the file and the key."""


@dataclass(frozen=True)
class Step:
    name: str
    order: int
    group: str
    # False for an explored branch that later steps do not build on.
    adopted: bool
    # The step this one changes (by default the last adopted step before it).
    parent: str | None
    description: str
    arch: ArchSpec
    recipe: RecipeSpec
    # The reference numbers: top1 (%), top1_std, gflops (GMACs), fig2_top1, fig2_gflops, note.
    paper: dict[str, Any]
    # Only the flags this step's file names: {"arch": {...}, "recipe": {...}}.
    changes: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class Roadmap:
    name: str
    title: str
    description: str
    dataset: str
    # Where the step files' paper numbers come from, e.g. "Table 10"; "" when they cite none.
    paper_table: str
    # The reference model drawn as a line in the chart: name, top1 (%), gflops (GMACs).
    reference: dict[str, Any]
    steps: tuple[Step, ...]
    path: Path = field(repr=False)

    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise RoadmapError(f"unknown step {name!r} in roadmap {self.name!r}; valid steps: {', '.join(self.names())}")

    @property
    def paper_source(self) -> str:
        """"paper (Table 10)": where the paper numbers of this roadmap come from."""
        return f"paper ({self.paper_table})" if self.paper_table else "paper"

    def upto(self, name: str) -> list[Step]:
        """Every step in roadmap order up to and including `name`, explored branches included."""
        last = self.step(name).order
        return [step for step in self.steps if step.order <= last]


def list_roadmaps(steps_dir: Path | None = None) -> list[str]:
    root = Path(steps_dir or DEFAULT_STEPS_DIR)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.toml"))) if root.is_dir() else []


def load_roadmap(name: str, steps_dir: Path | str | None = None) -> Roadmap:
    """Load `steps/<name>/`: an optional roadmap.toml and one NN_<step>.toml per step, in order."""
    root = Path(steps_dir or DEFAULT_STEPS_DIR)
    available = list_roadmaps(root)
    if name not in available:
        valid = ", ".join(available) or f"(none found in {root})"
        raise RoadmapError(f"unknown roadmap {name!r}; valid roadmaps: {valid}")
    folder = root / name
    meta = _read_toml(folder / ROADMAP_FILE) if (folder / ROADMAP_FILE).exists() else {}
    _reject_unknown(meta, ROADMAP_KEYS, folder / ROADMAP_FILE)
    _reject_unknown(meta.get("reference", {}), REFERENCE_KEYS, folder / ROADMAP_FILE, "reference.")
    files = sorted(p for p in folder.glob("*.toml") if p.name != ROADMAP_FILE)
    steps: list[Step] = []
    for order, path in enumerate(files):
        steps.append(_fold_step(_read_toml(path), path, order, steps))
    return Roadmap(
        name=name,
        title=meta.get("title", name),
        description=meta.get("description", ""),
        dataset=meta.get("dataset", ""),
        paper_table=meta.get("paper_table", ""),
        reference=dict(meta.get("reference", {})),
        steps=tuple(steps),
        path=folder,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RoadmapError(f"{path}: not valid TOML ({error})") from None


def _reject_unknown(table: dict[str, Any], valid: set[str], path: Path, prefix: str = "") -> None:
    for key in table:
        if key not in valid:
            raise RoadmapError(f"{path}: unknown key {prefix}{key!r}; valid keys: {', '.join(sorted(valid))}")


def _fold_step(raw: dict[str, Any], path: Path, order: int, earlier: list[Step]) -> Step:
    """A full Step from a step file's delta applied to its parent's specs."""
    _reject_unknown(raw, STEP_KEYS, path)
    _reject_unknown(raw.get("paper", {}), PAPER_KEYS, path, "paper.")
    for key in REQUIRED_STEP_KEYS:
        if key not in raw:
            raise RoadmapError(f"{path}: missing key {key!r}")
    name = raw["name"]
    expected_name = path.stem.split("_", 1)[-1]
    if name != expected_name:
        raise RoadmapError(f"{path}: key 'name' is {name!r} but the file name says {expected_name!r}")
    if not isinstance(raw["adopted"], bool):
        raise RoadmapError(f"{path}: key 'adopted' must be true or false, not {raw['adopted']!r}")
    if any(step.name == name for step in earlier):
        raise RoadmapError(f"{path}: key 'name' repeats the step {name!r}")
    for table in ("arch", "recipe_overrides", "paper"):
        if not isinstance(raw.get(table, {}), dict):
            raise RoadmapError(f"{path}: key {table!r} must be a table")

    parent = _parent(raw, path, earlier)
    base_arch = parent.arch if parent else ArchSpec()
    base_recipe = parent.recipe if parent else get_recipe("classic")
    try:
        arch = replace_checked(base_arch, _tuples(raw.get("arch", {})), f"{path}: [arch]")
        if "recipe" in raw:
            base_recipe = get_recipe(raw["recipe"])
        recipe = replace_checked(base_recipe, _tuples(raw.get("recipe_overrides", {})), f"{path}: [recipe_overrides]")
    except SpecError as error:
        message = str(error)
        raise RoadmapError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    except TypeError as error:
        raise RoadmapError(f"{path}: {error}") from None
    return Step(
        name=name,
        order=order,
        group=raw["group"],
        adopted=raw["adopted"],
        parent=parent.name if parent else None,
        description=raw.get("description", ""),
        arch=arch,
        recipe=recipe,
        paper=dict(raw.get("paper", {})),
        changes={"arch": dict(raw.get("arch", {})), "recipe": dict(raw.get("recipe_overrides", {}))}
        | ({"recipe_name": raw["recipe"]} if "recipe" in raw else {}),
        path=path,
    )


def _parent(raw: dict[str, Any], path: Path, earlier: list[Step]) -> Step | None:
    if "parent" in raw:
        for step in earlier:
            if step.name == raw["parent"]:
                return step
        names = ", ".join(step.name for step in earlier) or "(no earlier step)"
        raise RoadmapError(f"{path}: key 'parent' names {raw['parent']!r}; valid: an earlier step ({names})")
    adopted = [step for step in earlier if step.adopted]
    return adopted[-1] if adopted else None


def _tuples(table: dict[str, Any]) -> dict[str, Any]:
    """TOML arrays become tuples, as the frozen specs hold them."""
    return {key: tuple(v) if isinstance(v, list) else v for key, v in table.items()}
