"""A study's plan as data: the typed variants it trains and compares, and what each one is compared with.

The planner (`roadmap.study.planner`) computes a `StudyPlan` once, from the roadmap, the ablation mode, the
preset and the overrides. Units of work, MLflow tags, the summary, the Δs, the tables and the figures are all
keyed by its variants and their configuration hashes; none of them walks the roadmap again. The plan travels
as `plan.json` on the study's parent run, so that a figure can be redrawn from MLflow alone.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import SpecError
from .spec import ArchSpec, DataSpec, RecipeSpec, spec_hash, to_dict
from .steps import Roadmap

# Bumped whenever what the configuration hash covers changes: runs hashed otherwise are of another version.
HASH_VERSION = 2


class Ablation(StrEnum):
    """How a study's variants relate to the roadmap."""

    # Every step up to --upto, each on top of its parent (the paper's Figure 2).
    CUMULATIVE = "cumulative"
    # The final configuration, and the chain replayed with one adopted step left out at a time.
    LEAVE_ONE_OUT = "leave-one-out"


@dataclass(frozen=True)
class PaperStep:
    """One step of a roadmap as the report draws it beside a study: its place in the paper's chain and numbers."""

    name: str
    order: int
    group: str
    adopted: bool
    parent: str | None
    paper: dict[str, Any]  # the step file's paper table: top1, top1_std, gflops, note ...


@dataclass(frozen=True)
class RoadmapInfo:
    """What the report says about the roadmap a plan comes from (its title, its paper table, its reference, and
    every step with the paper's numbers), so that no report reads step files again."""

    name: str
    title: str
    # The paper's data set, e.g. "ImageNet-1K".
    dataset: str = ""
    # Where the paper numbers come from, e.g. "Table 10"; "" when they cite none.
    paper_table: str = ""
    # The reference model drawn as a line in the chart: name, top1 (%), gflops (GMACs).
    reference: dict[str, Any] = field(default_factory=dict)
    # Every step of the roadmap, in order: the paper's chain the figures draw beyond a study's --upto.
    steps: tuple[PaperStep, ...] = ()

    @classmethod
    def of(cls, roadmap: Roadmap) -> RoadmapInfo:
        steps = tuple(PaperStep(step.name, step.order, step.group, step.adopted, step.parent, dict(step.paper))
                      for step in roadmap.steps)
        return cls(roadmap.name, roadmap.title, roadmap.dataset, roadmap.paper_table, dict(roadmap.reference), steps)

    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    @property
    def paper_source(self) -> str:
        """"paper (Table 10)": where the paper numbers of this roadmap come from."""
        return f"paper ({self.paper_table})" if self.paper_table else "paper"


@dataclass(frozen=True)
class PaperNumbers:
    """The paper's numbers for a variant, where the paper has a step with exactly its configuration."""

    top1: float = math.nan  # % on ImageNet-1K
    top1_std: float = math.nan  # over the paper's seeds (Table 10: 3)
    gflops: float = math.nan  # as published: multiply-accumulates
    # The step of the paper's chain these numbers belong to ("" when none), and the step file's note.
    step: str = ""
    note: str = ""

    @classmethod
    def of_step(cls, paper: dict[str, Any], step: str) -> PaperNumbers:
        return cls(float(paper.get("top1", math.nan)), float(paper.get("top1_std", math.nan)),
                   float(paper.get("gflops", math.nan)), step, str(paper.get("note", "")))


@dataclass(frozen=True)
class Variant:
    """One configuration of a study: what trains, what it is compared with, and what the paper says of it."""

    # e.g. "kernel_7" (cumulative) or "without_bn_to_ln" (leave-one-out); runs are named "<name> seed <k>".
    name: str
    # e.g. "kernel 7", "without BN → LN".
    label: str
    # Figure 2's section (leave-one-out: the section of the step left out).
    group: str
    # False for an explored branch that later steps do not build on (hatched in the chart).
    adopted: bool
    order: int
    # The step file it comes from: the step itself (cumulative), the step left out, or the final step.
    step: str
    # The variant its Δ is measured against (None for the first, or for the final model of leave-one-out).
    baseline: str | None
    # Resolved at the study's scale: what trains.
    arch: ArchSpec
    recipe: RecipeSpec  # recipe.bn_batch is the resolved micro-batch: images per BatchNorm statistic
    data: DataSpec
    precision: str
    # effective batch = micro_batch x accumulation_steps x processes
    micro_batch: int
    accumulation_steps: int
    processes: int
    # The hash of what determines the result (HASH_VERSION); "" for a paper-only plan.
    config_hash: str
    paper: PaperNumbers = PaperNumbers()
    # Size at the study's resolution and width: parameters, and G multiply-accumulates of conv + linear layers
    # for one image (the paper's "GFLOPs" convention).
    params: int = 0
    gmacs: float = math.nan
    # Leave-one-out: the variant it is identical to (same hash: not trained again) and why.
    identical_to: str | None = None
    # Why the network cannot be built ("" when it can): listed in the plan, never trained.
    unbuildable: str = ""
    # Why it is identical or unbuildable, in one line.
    note: str = ""

    @property
    def trains(self) -> bool:
        """Whether the study trains this variant's runs (identical and unbuildable variants train nothing)."""
        return self.identical_to is None and not self.unbuildable

    def configuration(self) -> dict[str, Any]:
        """What the configuration hash covers: architecture, recipe (with the batch split), data content,
        resolution and width, epochs and precision. The seed is the run's other key; names, paths, workers,
        threads and the launcher are never part of it."""
        return configuration(self.arch, self.recipe, self.data, self.precision, self.accumulation_steps,
                             self.processes)


def configuration(arch: ArchSpec, recipe: RecipeSpec, data: DataSpec, precision: str, accumulation_steps: int,
                  processes: int) -> dict[str, Any]:
    """The hashed configuration of a run (see Variant.configuration)."""
    return {"hash_version": HASH_VERSION, "arch": to_dict(arch), "recipe": to_dict(recipe),
            "data": data_content(data), "precision": precision,
            "batch_split": {"accumulation_steps": accumulation_steps, "processes": processes}}


def configuration_hash(config: dict[str, Any]) -> str:
    return spec_hash(config)


def data_content(data: DataSpec) -> dict[str, Any]:
    """The DataSpec: which images a run sees (how they are loaded is in the run settings)."""
    return to_dict(data)


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study trains and compares: its variants in order, its seeds, and how it reports."""

    roadmap: RoadmapInfo
    ablation: Ablation
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    preset: str
    # Which epoch's top-1 the table and the figures use: "last" or "best".
    report: str = "last"
    # The last step the study covers (--upto).
    upto: str = ""

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise SpecError(f"unknown variant {name!r}; valid: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [variant.name for variant in self.variants]

    def trained(self) -> tuple[Variant, ...]:
        """The variants whose runs the study trains, in plan order."""
        return tuple(variant for variant in self.variants if variant.trains)

    def hashes(self) -> set[str]:
        return {variant.config_hash for variant in self.variants if variant.config_hash}

    def to_json(self) -> str:
        return json.dumps(_plain(dataclasses.asdict(self)), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StudyPlan:
        """A plan written by `to_json`; a SpecError (one line) when it is not one."""
        try:
            raw = json.loads(text)
            variants = tuple(_variant(item) for item in raw["variants"])
            info = raw["roadmap"] | {"steps": tuple(PaperStep(**step) for step in raw["roadmap"].get("steps", ()))}
            return cls(roadmap=RoadmapInfo(**info), ablation=Ablation(raw["ablation"]), variants=variants,
                       seeds=tuple(raw["seeds"]), preset=raw["preset"], report=raw.get("report", "last"),
                       upto=raw.get("upto", ""))
        except (ValueError, KeyError, TypeError, SpecError) as error:
            raise SpecError(f"not a study plan of this version ({type(error).__name__}: {error})") from None


def _variant(raw: dict[str, Any]) -> Variant:
    raw = dict(raw)
    raw["arch"] = ArchSpec(**raw["arch"])
    raw["recipe"] = RecipeSpec(**raw["recipe"])
    raw["data"] = DataSpec(**raw["data"])
    raw["paper"] = PaperNumbers(**{key: math.nan if value is None else value for key, value in raw["paper"].items()})
    return Variant(**raw)


def _plain(value: Any) -> Any:
    """JSON-ready: tuples as lists, NaN as null."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def step_label(name: str) -> str:
    """"bn_to_ln" -> "bn to ln": a step's name as the figures print it."""
    return name.replace("_", " ")
