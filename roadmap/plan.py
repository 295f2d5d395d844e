"""The study plan without training: each step's size and cost beside the paper's numbers."""
from __future__ import annotations

import dataclasses
import json
import math

from .complexity import arch_complexity
from .spec import MIN_IMAGE_SIZE, whole_number
from .steps import Step

# The keys of `--json`, in order.
PLAN_KEYS = ("step", "group", "adopted", "params", "gmacs", "paper_top1", "paper_gflops")


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


def format_plan_json(rows: list[dict]) -> str:
    return json.dumps([{key: row[key] for key in PLAN_KEYS} for row in rows], indent=2)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_plan_table(rows: list[dict], title: str, image_size: int, width_multiplier: float) -> str:
    """A fixed-width table; GMACs and the paper's GFLOPs are both multiply-accumulates."""
    header = (
        f"{title}: {len(rows)} steps. GMACs = 10^9 multiply-accumulates (the paper's 'GFLOPs'), conv + linear only, "
        f"one {image_size}x{image_size} image, width x{width_multiplier:g}"
    )
    columns = f"{'#':>2}  {'step':<22} {'group':<20} {'adopted':<8} {'params (M)':>10} {'GMACs':>7} " \
              f"{'paper top-1 (%)':>15} {'paper GFLOPs':>12} {'Δ GMACs':>8}"
    lines = [header, columns, "-" * len(columns)]
    for index, row in enumerate(rows):
        paper_gflops = row["paper_gflops"]
        delta = None if paper_gflops is None else row["gmacs"] - paper_gflops
        lines.append(
            f"{index:>2}  {row['step']:<22} {row['group']:<20} {'yes' if row['adopted'] else 'explored':<8} "
            f"{row['params'] / 1e6:>10.2f} {row['gmacs']:>7.3f} {_number(row['paper_top1'], '.2f'):>15} "
            f"{_number(paper_gflops, '.2f'):>12} {_number(delta, '+.3f'):>8}{' *' if row['note'] else ''}"
        )
    notes = [f"* {row['step']}: {row['note']}" for row in rows if row["note"]]
    return "\n".join(lines + notes)
