"""The study plan without training: each step's size and cost beside the paper's numbers, and how it would train."""
from __future__ import annotations

import dataclasses
import json
import math

from ..models.complexity import arch_complexity
from ..spec import MIN_IMAGE_SIZE, whole_number
from ..steps import Step
from .options import StudyOptions

# The keys of `--list-steps --json`, in order; `--dry-run --json` adds TRAINING_KEYS.
PLAN_KEYS = ("step", "group", "adopted", "params", "gmacs", "paper_top1", "paper_gflops")
# How each step would train in this study: recipe, epochs, images per optimizer step, images per forward
# pass of one process (= per BatchNorm statistic), accumulation steps, processes, peak learning rate.
TRAINING_KEYS = ("recipe", "epochs", "image_size", "batch_size", "micro_batch", "accumulation_steps", "processes",
                 "bn_batch", "peak_lr")


def plan_rows(steps: list[Step], image_size: int = 224, width_multiplier: float = 1.0) -> list[dict]:
    """One row per step: params (count), GMACs at `image_size` and the paper's top-1 and GFLOPs."""
    whole_number("image_size", image_size, MIN_IMAGE_SIZE)  # ArchSpec itself checks the width multiplier
    rows = []
    for step in steps:
        arch = dataclasses.replace(step.arch, width_multiplier=width_multiplier)
        complexity = arch_complexity(arch, image_size)
        rows.append({
            "step": step.name,
            "group": step.group,
            "adopted": step.adopted,
            "params": complexity.params,
            "gmacs": round(complexity.gmacs, 6),
            "note": step.paper.get("note", ""),
            "paper_top1": step.paper.get("top1"),
            "paper_gflops": step.paper.get("gflops"),
        })
    return rows


def with_training(rows: list[dict], study: StudyOptions) -> list[dict]:
    """The rows of `study.steps` with how each step trains at the study's scale (TRAINING_KEYS)."""
    by_name = {step.name: step for step in study.steps}
    trained = []
    for row in rows:
        resolved = study.resolve(by_name[row["step"]])
        recipe, split = resolved.recipe, resolved.split
        trained.append({**row, "recipe": recipe.name, "epochs": recipe.epochs, "image_size": resolved.data.image_size,
                        "batch_size": recipe.batch_size, "micro_batch": split.micro_batch,
                        "accumulation_steps": split.accumulation_steps, "processes": split.world_size,
                        "bn_batch": recipe.bn_batch, "peak_lr": recipe.lr()})
    return trained


def format_plan_json(rows: list[dict]) -> str:
    keys = PLAN_KEYS + (TRAINING_KEYS if rows and "recipe" in rows[0] else ())
    return json.dumps([{key: row[key] for key in keys} for row in rows], indent=2)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_plan_table(rows: list[dict], title: str, image_size: int, width_multiplier: float) -> str:
    """A fixed-width table; GMACs and the paper's GFLOPs are both multiply-accumulates."""
    training = bool(rows) and "recipe" in rows[0]
    header = (
        f"{title}: {len(rows)} steps. GMACs = 10^9 multiply-accumulates (the paper's 'GFLOPs'), conv + linear only, "
        f"one {image_size}x{image_size} image, width x{width_multiplier:g}"
    )
    columns = f"{'#':>2}  {'step':<22} {'group':<20} {'adopted':<8} {'params (M)':>10} {'GMACs':>7} " \
              f"{'paper top-1 (%)':>15} {'paper GFLOPs':>12} {'Δ GMACs':>8}"
    if training:
        header += ("\ntraining in this study: recipe, epochs, resolution (px), batch = images per forward pass "
                   "(= per BatchNorm statistic) x accumulation steps x processes, peak learning rate")
        columns += f"  {'recipe':<8} {'epochs':>6} {'px':>4} {'batch = micro x accum x procs':>30} {'peak lr':>8}"
    lines = [header, columns, "-" * len(columns)]
    for index, row in enumerate(rows):
        paper_gflops = row["paper_gflops"]
        delta = None if paper_gflops is None else row["gmacs"] - paper_gflops
        line = (
            f"{index:>2}  {row['step']:<22} {row['group']:<20} {'yes' if row['adopted'] else 'explored':<8} "
            f"{row['params'] / 1e6:>10.2f} {row['gmacs']:>7.3f} {_number(row['paper_top1'], '.2f'):>15} "
            f"{_number(paper_gflops, '.2f'):>12} {_number(delta, '+.3f'):>8}"
        )
        if training:
            split = f"{row['batch_size']} = {row['micro_batch']} x {row['accumulation_steps']} x {row['processes']}"
            line += (f"  {row['recipe']:<8} {row['epochs']:>6} {row['image_size']:>4} {split:>30} "
                     f"{row['peak_lr']:>8.2e}")
        lines.append(line + (" *" if row["note"] else ""))
    notes = [f"* {row['step']}: {row['note']}" for row in rows if row["note"]]
    return "\n".join(lines + notes)
