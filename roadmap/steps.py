"""Read a roadmap's step files, validate them, and fold their deltas into a chain of full specs."""
from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recipes import get_recipe
from .spec import ArchSpec, RecipeSpec, SpecError, did_you_mean, number_in, replace_checked


def builtin_steps_dir() -> Path:
    """The roadmaps this project ships: `steps/` of a source checkout, or the copy an installed wheel carries."""
    package = Path(__file__).resolve().parent
    installed = package / "roadmaps"  # pyproject.toml maps the repository's steps/ here in a wheel
    return installed if installed.is_dir() else package.parent / "steps"


DEFAULT_STEPS_DIR = builtin_steps_dir()
ROADMAP_FILE = "roadmap.toml"

STEP_KEYS = {"name", "group", "adopted", "parent", "description", "recipe", "recipe_overrides", "arch", "paper"}
REQUIRED_STEP_KEYS = ("name", "group", "adopted")
ROADMAP_KEYS = {"title", "description", "dataset", "paper_table", "reference"}
# The valid interval of each paper number: top-1 accuracies in %, its std in points, and GMACs (the paper's
# "GFLOPs"). A key missing here ("note", "name") is text.
PAPER_RANGES = {"top1": "[0, 100]", "top1_std": "[0, inf)", "gflops": "(0, inf)", "fig2_top1": "[0, 100]",
                "fig2_gflops": "(0, inf)"}
PAPER_KEYS = set(PAPER_RANGES) | {"note"}
REFERENCE_RANGES = {"top1": "[0, 100]", "gflops": "(0, inf)", "params_m": "(0, inf)"}
REFERENCE_KEYS = set(REFERENCE_RANGES) | {"name"}
# A step file is NN_<name>.toml; the name also names its runs, checkpoint folders and torch.hub entry point.
STEP_FILE = re.compile(r"\d+_(.+)\.toml")
STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
        raise RoadmapError(f"unknown step {name!r} in roadmap {self.name!r};{did_you_mean(name, self.names())} "
                           f"valid steps: {', '.join(self.names())}")

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
        raise RoadmapError(f"unknown roadmap {name!r};{did_you_mean(name, available)} valid roadmaps: {valid}")
    folder = root / name
    meta = _read_toml(folder / ROADMAP_FILE) if (folder / ROADMAP_FILE).exists() else {}
    _check_meta(meta, folder / ROADMAP_FILE)
    files = sorted(p for p in folder.glob("*.toml") if p.name != ROADMAP_FILE)
    if not files:
        raise RoadmapError(f"{folder}: no step files; a roadmap holds one NN_<step>.toml per step")
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
            raise RoadmapError(f"{path}: unknown key {prefix + key!r};{did_you_mean(key, valid)} valid keys: "
                               f"{', '.join(sorted(valid))}")


@contextmanager
def _naming(path: Path, table: str = "") -> Iterator[None]:
    """A SpecError raised inside becomes a RoadmapError that starts with the file (and the table) it concerns."""
    try:
        yield
    except SpecError as error:
        message = str(error)
        raise RoadmapError(message if message.startswith(str(path)) else f"{path}: {table}{message}") from None


def _text(path: Path, key: str, value: Any, *, empty: bool = True) -> None:
    if not isinstance(value, str) or not (empty or value.strip()):
        raise RoadmapError(f"{path}: key {key!r}={value!r} is not valid; {'a' if empty else 'a non-empty'} string")


def _table(path: Path, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RoadmapError(f"{path}: key {key!r}={value!r} is not valid; a table, e.g. {key} = {{ ... }}")
    return value


def _numbers(path: Path, prefix: str, table: dict[str, Any], ranges: dict[str, str]) -> None:
    """Each number of `table` in its interval, each other value text."""
    for key, value in table.items():
        if key in ranges:
            with _naming(path):
                number_in(f"{prefix}{key}", value, ranges[key])
        else:
            _text(path, f"{prefix}{key}", value)


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """roadmap.toml: known keys, text where text belongs, the reference's numbers in range."""
    _reject_unknown(meta, ROADMAP_KEYS, path)
    for key in ROADMAP_KEYS - {"reference"}:
        if key in meta:
            _text(path, key, meta[key])
    reference = _table(path, "reference", meta.get("reference", {}))
    _reject_unknown(reference, REFERENCE_KEYS, path, "reference.")
    _numbers(path, "reference.", reference, REFERENCE_RANGES)


def _check_step_keys(raw: dict[str, Any], path: Path, earlier: list[Step]) -> None:
    """Every key of a step file but its specs: names, types, and the paper numbers' ranges."""
    _reject_unknown(raw, STEP_KEYS, path)
    for key in REQUIRED_STEP_KEYS:
        if key not in raw:
            raise RoadmapError(f"{path}: missing key {key!r}")
    file_name = STEP_FILE.fullmatch(path.name)
    if not file_name:
        raise RoadmapError(f"{path}: a step file is named NN_<step>.toml (NN its place in the roadmap), "
                           f"e.g. 08_kernel_5.toml")
    name = raw["name"]
    if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
        raise RoadmapError(f"{path}: key 'name'={name!r} is not valid; letters, digits and _ (not first a digit), "
                           f"e.g. kernel_5")
    if name != file_name.group(1):
        raise RoadmapError(f"{path}: key 'name' is {name!r} but the file name says {file_name.group(1)!r}")
    if any(step.name == name for step in earlier):
        raise RoadmapError(f"{path}: key 'name' repeats the step {name!r}")
    _text(path, "group", raw["group"], empty=False)
    if not isinstance(raw["adopted"], bool):
        raise RoadmapError(f"{path}: key 'adopted' must be true or false, not {raw['adopted']!r}")
    if "description" in raw:
        _text(path, "description", raw["description"])
    for key in ("arch", "recipe_overrides"):
        _table(path, key, raw.get(key, {}))
    paper = _table(path, "paper", raw.get("paper", {}))
    _reject_unknown(paper, PAPER_KEYS, path, "paper.")
    _numbers(path, "paper.", paper, PAPER_RANGES)


def _fold_step(raw: dict[str, Any], path: Path, order: int, earlier: list[Step]) -> Step:
    """A full Step from a step file's delta applied to its parent's specs, every value checked."""
    _check_step_keys(raw, path, earlier)
    name = raw["name"]
    parent = _parent(raw, path, earlier)
    base_arch = parent.arch if parent else ArchSpec()
    base_recipe = parent.recipe if parent else get_recipe("classic")
    with _naming(path, "[arch] "):
        arch = replace_checked(base_arch, _tuples(raw.get("arch", {})), f"{path}: [arch]")
    if "recipe" in raw:
        with _naming(path):
            base_recipe = get_recipe(raw["recipe"])
    with _naming(path, "[recipe_overrides] "):
        recipe = replace_checked(base_recipe, _tuples(raw.get("recipe_overrides", {})), f"{path}: [recipe_overrides]")
        recipe.check_warmup()
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
