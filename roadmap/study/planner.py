"""The planner: a study request (what to study) in, the typed plan of variants out, computed once.

Cumulative: every step up to --upto on top of its parent, as in the paper's Figure 2. Leave-one-out: the final
configuration at --upto, and for each adopted step on its chain from the second on, `without_<step>`: the chain
replayed from the first step with every delta applied except that one's, architecture and recipe alike.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..models.complexity import arch_complexity
from ..recipes import get_recipe
from ..spec import ArchSpec, DataSpec, RecipeSpec, replace_checked
from ..steps import Roadmap, Step
from ..training.batching import split_batch
from ..variants import (
    Ablation,
    PaperNumbers,
    RoadmapInfo,
    StudyPlan,
    Variant,
    configuration,
    configuration_hash,
    step_label,
)
from .presets import Preset, apply_preset

REPORTS = ("last", "best")


@dataclass(frozen=True)
class ScaleOverrides:
    """Explicit overrides of the preset; None keeps the preset's value."""

    epochs: int | None = None
    # Effective batch (images per optimizer step, all processes and accumulation together).
    batch_size: int | None = None
    image_size: int | None = None
    width_multiplier: float | None = None
    # The peak learning rate itself (after batch scaling).
    lr: float | None = None
    # Images per process per forward pass (hence per BatchNorm statistic).
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        from ..spec import whole_number

        for name, minimum in (("epochs", 0), ("batch_size", 1), ("image_size", 1), ("micro_batch", 1)):
            if getattr(self, name) is not None:
                whole_number(f"--{name.replace('_', '-')}", getattr(self, name), minimum)


@dataclass(frozen=True)
class StudyRequest:
    """What to study, never how it runs: the roadmap, the ablation, the scale and the seeds."""

    roadmap: Roadmap
    preset: Preset
    data: DataSpec
    seeds: tuple[int, ...] = (0,)
    ablation: Ablation = Ablation.CUMULATIVE
    # The last step covered (None: the roadmap's last step).
    upto: str | None = None
    overrides: ScaleOverrides = field(default_factory=ScaleOverrides)
    # "bf16": forward passes under torch.autocast in bfloat16; "fp32" (TF32 on CUDA).
    precision: str = "fp32"
    report: str = "last"
    # Training processes of each run (torchrun's in this process, or the launcher's per job): the batch split.
    processes: int = 1
    # Imagefolder images read from the image cache (--data-cache): stored at a short side the resolution decides.
    cached: bool = False


def plan_study(request: StudyRequest) -> StudyPlan:
    """The study's variants in order, each resolved at the study's scale and hashed; every spec is checked."""
    roadmap = request.roadmap
    steps = roadmap.upto(request.upto) if request.upto else list(roadmap.steps)
    if request.ablation == Ablation.CUMULATIVE:
        variants = [_cumulative(request, step) for step in steps]
    else:
        variants = _leave_one_out(request, steps)
    return StudyPlan(roadmap=RoadmapInfo.of(roadmap), ablation=request.ablation, variants=tuple(variants),
                     seeds=tuple(request.seeds), preset=request.preset.name, report=request.report,
                     upto=steps[-1].name)


def _cumulative(request: StudyRequest, step: Step) -> Variant:
    return _variant(request, name=step.name, label=step_label(step.name), group=step.group, adopted=step.adopted,
                    order=step.order, step=step.name, baseline=step.parent, arch=step.arch, recipe=step.recipe,
                    paper=PaperNumbers.of_step(step.paper, step.name))


def _leave_one_out(request: StudyRequest, steps: Sequence[Step]) -> list[Variant]:
    roadmap = request.roadmap
    adopted = [step for step in steps if step.adopted]
    if len(adopted) < 2:
        raise SpecError(f"--ablation leave-one-out needs at least 2 adopted steps up to "
                        f"{steps[-1].name!r}; there is {len(adopted)}: choose a later --upto")
    final_step = adopted[-1]
    chain = chain_of(roadmap, final_step)
    final = dataclasses.replace(_cumulative(request, final_step), label=f"all steps ({step_label(final_step.name)})",
                                baseline=None, order=0)
    variants = [final]
    for order, left_out in enumerate(chain[1:], start=1):
        name, label = f"without_{left_out.name}", f"without {step_label(left_out.name)}"
        common: dict[str, Any] = dict(name=name, label=label, group=left_out.group, adopted=True, order=order,
                                      step=left_out.name, baseline=final.name)
        try:
            arch, recipe = replay(chain, left_out=left_out)
            variant = _variant(request, arch=arch, recipe=recipe, paper=_paper_numbers(roadmap, arch, recipe),
                               **common)
        except (SpecError, TypeError, ValueError) as error:
            variants.append(_unbuildable(common, final, f"undoing {left_out.name} gives an invalid "
                                                        f"configuration: {error}"))
            continue
        if variant.trains and variant.config_hash == final.config_hash:
            overriders = [step.name for step in chain if step.order > left_out.order
                          and _flags(step) & _flags(left_out)]
            why = (f"every flag it sets is set again by {', '.join(overriders)}" if overriders
                   else "the flags it sets already had those values")
            variant = dataclasses.replace(variant, identical_to=final.name,
                                          note=f"identical to {final.name}: {why}")
        variants.append(variant)
    return variants


def chain_of(roadmap: Roadmap, final: Step) -> list[Step]:
    """The steps from the roadmap's first to `final`, following each step's parent."""
    chain = [final]
    while chain[-1].parent:
        chain.append(roadmap.step(chain[-1].parent))
    return chain[::-1]


def replay(chain: Sequence[Step], left_out: Step | None = None) -> tuple[ArchSpec, RecipeSpec]:
    """The specs of the chain's last step with every step's delta applied in order, except `left_out`'s.

    The first step spells out a whole configuration; each later one changes the flags its file names and may
    switch the recipe (which starts the recipe afresh, as loading the step files does).
    """
    arch, recipe = chain[0].arch, chain[0].recipe
    for step in chain[1:]:
        if step is left_out:
            continue
        where = f"{step.path}"
        arch = replace_checked(arch, _tuples(step.changes["arch"]), f"{where}: [arch]")
        if "recipe_name" in step.changes:
            recipe = get_recipe(step.changes["recipe_name"])
        recipe = replace_checked(recipe, _tuples(step.changes["recipe"]), f"{where}: [recipe_overrides]")
    return arch, recipe


def _flags(step: Step) -> set[str]:
    """The flags a step's file sets: "arch.<flag>", "recipe.<field>", and "recipe" for a recipe switch."""
    flags = {f"arch.{key}" for key in step.changes["arch"]} | {f"recipe.{key}" for key in step.changes["recipe"]}
    return flags | ({"recipe"} if "recipe_name" in step.changes else set())


def _tuples(table: dict[str, Any]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in table.items()}


def _paper_numbers(roadmap: Roadmap, arch: ArchSpec, recipe: RecipeSpec) -> PaperNumbers:
    """The paper's numbers of the step whose full-size configuration this is, if the paper's chain has one."""
    for step in roadmap.steps:
        if step.arch == arch and step.recipe == recipe:
            return PaperNumbers.of_step(step.paper, step.name)
    return PaperNumbers()


def resolve(request: StudyRequest, arch: ArchSpec, recipe: RecipeSpec) -> tuple[ArchSpec, RecipeSpec, DataSpec, Any]:
    """Full-size specs at the study's scale, and the batch split of one run over its processes."""
    scale = request.overrides
    arch, recipe, data = apply_preset(
        request.preset, arch, recipe, request.data, epochs=scale.epochs, batch_size=scale.batch_size,
        image_size=scale.image_size, width_multiplier=scale.width_multiplier, lr=scale.lr,
    )
    if request.cached:
        from ..data import default_cache_short_side

        data = dataclasses.replace(data, cache_short_side=default_cache_short_side(data.image_size))
    micro = scale.micro_batch or (recipe.bn_batch if request.preset.micro_batch == "recipe" else None)
    split = split_batch(recipe.batch_size, request.processes, micro)
    return arch, dataclasses.replace(recipe, bn_batch=split.micro_batch), data, split


def _variant(request: StudyRequest, *, arch: ArchSpec, recipe: RecipeSpec, **fields: Any) -> Variant:
    arch, recipe, data, split = resolve(request, arch, recipe)
    config = configuration(arch, recipe, data, request.precision, split.accumulation_steps, split.world_size)
    variant = Variant(arch=arch, recipe=recipe, data=data, precision=request.precision,
                      micro_batch=split.micro_batch, accumulation_steps=split.accumulation_steps,
                      processes=split.world_size, config_hash=configuration_hash(config), **fields)
    try:
        complexity = arch_complexity(arch, data.image_size, num_classes=max(data.num_classes, 1))
    except (SpecError, RuntimeError, ValueError) as error:  # a combination the network cannot build
        reason = f"the network cannot be built: {error}".splitlines()[0]
        return dataclasses.replace(variant, unbuildable=reason, note=reason)
    return dataclasses.replace(variant, params=complexity.params, gmacs=complexity.gmacs)


def _unbuildable(common: dict[str, Any], final: Variant, reason: str) -> Variant:
    """A variant listed with its reason, never trained (the final model's specs stand in for its own)."""
    return dataclasses.replace(final, **common, config_hash="", paper=PaperNumbers(), unbuildable=reason,
                               note=reason, params=0, gmacs=float("nan"))
