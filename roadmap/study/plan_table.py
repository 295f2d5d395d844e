"""The plan as `--dry-run` and `--list-steps` print it: each variant's size at the study's scale and the paper's,
how it would train, and what it is compared with."""
from __future__ import annotations

import dataclasses
import json
import math

from ..models.complexity import arch_complexity
from ..spec import MIN_IMAGE_SIZE, whole_number
from ..steps import Step
from ..variants import StudyPlan, Variant
from .estimate import ESTIMATE_KEYS, BudgetExceeded, EstimateSettings, PlanEstimate, budget_refusal, estimate_plan
from .settings import Study

# The keys of `--list-steps --json`, in order.
STEP_KEYS = ("step", "group", "adopted", "params", "gmacs", "paper_top1", "paper_gflops")
# The keys of each variant in `--dry-run --json`: what it is, its size here and at the paper's scale (224 px, full
# width, 1000 classes), and how it would train (recipe, epochs, resolution, images per optimizer step, images per
# forward pass of one process = per BatchNorm statistic, accumulation steps, processes, peak learning rate), then
# its cost and the power of its Δ (roadmap.study.estimate.ESTIMATE_KEYS).
VARIANT_KEYS = ("variant", "label", "step", "group", "adopted", "baseline", "config_hash", "trains", "note",
                "params", "gmacs", "paper_scale_params", "paper_scale_gmacs", "paper_step", "paper_top1",
                "paper_gflops", "recipe", "epochs", "image_size", "batch_size", "micro_batch", "accumulation_steps",
                "processes", "bn_batch", "peak_lr", *ESTIMATE_KEYS)


def dry_run(study: Study, settings: EstimateSettings, as_json: bool) -> int:
    """`--dry-run`: print the plan with its cost and power (text or JSON); a plan over the budget is printed, then
    refused (BudgetExceeded, exit code 2)."""
    import click

    rows = variant_rows(study.plan)
    estimate = estimate_plan(study, settings)
    click.echo(format_plan_json(study.plan, rows, estimate) if as_json else
               format_plan_table(study.plan, rows, estimate.cost.finished) + "\n"
               + format_estimate_table(study.plan, estimate))
    refusal = budget_refusal(estimate, settings.budget_gpu_hours)
    if refusal:
        raise BudgetExceeded(refusal)
    return 0


def step_rows(steps: list[Step], image_size: int = 224, width_multiplier: float = 1.0) -> list[dict]:
    """One row per step: params (count), GMACs at `image_size` and the paper's top-1 and GFLOPs."""
    whole_number("image_size", image_size, MIN_IMAGE_SIZE)  # ArchSpec itself checks the width multiplier
    rows = []
    for step in steps:
        complexity = arch_complexity(dataclasses.replace(step.arch, width_multiplier=width_multiplier), image_size)
        rows.append({"step": step.name, "group": step.group, "adopted": step.adopted, "params": complexity.params,
                     "gmacs": round(complexity.gmacs, 6), "note": step.paper.get("note", ""),
                     "paper_top1": step.paper.get("top1"), "paper_gflops": step.paper.get("gflops")})
    return rows


def variant_rows(plan: StudyPlan) -> list[dict]:
    """One row per variant of the plan (VARIANT_KEYS)."""
    return [_variant_row(variant) for variant in plan.variants]


def _variant_row(variant: Variant) -> dict:
    full = arch_complexity(dataclasses.replace(variant.arch, width_multiplier=1.0), 224) if not variant.unbuildable \
        else None
    recipe = variant.recipe
    return {
        "variant": variant.name, "label": variant.label, "step": variant.step, "group": variant.group,
        "adopted": variant.adopted, "baseline": variant.baseline, "config_hash": variant.config_hash,
        "trains": variant.trains, "note": variant.note, "params": variant.params,
        "gmacs": _finite(round(variant.gmacs, 6)), "paper_scale_params": full.params if full else None,
        "paper_scale_gmacs": round(full.gmacs, 6) if full else None, "paper_step": variant.paper.step or None,
        "paper_top1": _finite(variant.paper.top1), "paper_gflops": _finite(variant.paper.gflops),
        "recipe": recipe.name, "epochs": recipe.epochs, "image_size": variant.data.image_size,
        "batch_size": recipe.batch_size, "micro_batch": variant.micro_batch,
        "accumulation_steps": variant.accumulation_steps, "processes": variant.processes, "bn_batch": recipe.bn_batch,
        "peak_lr": recipe.lr(),
    }


def format_steps_json(rows: list[dict]) -> str:
    return json.dumps([{key: row[key] for key in STEP_KEYS} for row in rows], indent=2)


def format_plan_json(plan: StudyPlan, rows: list[dict], estimate: PlanEstimate | None = None) -> str:
    """The plan as JSON: the study's settings, its units, its cost and power (PlanEstimate.summary_fields; absent
    without an estimate), and each variant (VARIANT_KEYS; the estimate's keys null without one)."""
    variants = []
    for row in rows:
        row = {**row, **(estimate.variant_fields(row["variant"]) if estimate else dict.fromkeys(ESTIMATE_KEYS))}
        variants.append({key: row[key] for key in VARIANT_KEYS})
    return json.dumps({
        "roadmap": plan.roadmap.name, "ablation": str(plan.ablation), "upto": plan.upto, "preset": plan.preset,
        "seeds": list(plan.seeds), "report": plan.report,
        "units": len({v.config_hash for v in plan.trained()}) * len(plan.seeds),
        **(estimate.summary_fields() if estimate else {}),
        "variants": variants,
    }, indent=2)


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_steps_table(rows: list[dict], title: str, image_size: int, width_multiplier: float) -> str:
    """Every step of a roadmap at one size; GMACs and the paper's GFLOPs are both multiply-accumulates."""
    header = (f"{title}: {len(rows)} steps. GMACs = 10^9 multiply-accumulates (the paper's 'GFLOPs'), conv + linear "
              f"only, one {image_size}x{image_size} image, width x{width_multiplier:g}")
    columns = (f"{'#':>2}  {'step':<22} {'group':<20} {'adopted':<8} {'params (M)':>10} {'GMACs':>7} "
               f"{'paper top-1 (%)':>15} {'paper GFLOPs':>12} {'Δ GMACs':>8}")
    lines = [header, columns, "-" * len(columns)]
    for index, row in enumerate(rows):
        paper_gflops = row["paper_gflops"]
        delta = None if paper_gflops is None else row["gmacs"] - paper_gflops
        lines.append(
            f"{index:>2}  {row['step']:<22} {row['group']:<20} {'yes' if row['adopted'] else 'explored':<8} "
            f"{row['params'] / 1e6:>10.2f} {row['gmacs']:>7.3f} {_number(row['paper_top1'], '.2f'):>15} "
            f"{_number(paper_gflops, '.2f'):>12} {_number(delta, '+.3f'):>8}" + (" *" if row["note"] else ""))
    notes = [f"* {row['step']}: {row['note']}" for row in rows if row["note"]]
    return "\n".join(lines + notes)


def format_plan_table(plan: StudyPlan, rows: list[dict], finished: frozenset[tuple[str, int]] = frozenset()) -> str:
    """The plan: every variant, what it is compared with, its size here and at the paper's scale, how it trains,
    and how many of its seeds are `finished` already ((config_hash, seed) in the store: a study skips them)."""
    units = len({v.config_hash for v in plan.trained()}) * len(plan.seeds)
    first = next((row for row in rows if row["trains"]), rows[0])
    lines = [
        f"{plan.roadmap.title}, {plan.ablation} up to {plan.upto}: {len(rows)} variants, {units} run(s) to train "
        f"({len(plan.seeds)} seed(s): {','.join(map(str, plan.seeds))}), preset {plan.preset}",
        f"sizes here: {first['image_size']} px at this study's width; at the paper's scale: 224 px, full width. "
        "GMACs = 10^9 multiply-accumulates of conv + linear layers for one image (the paper's 'GFLOPs').",
        "batch = images per forward pass (= per BatchNorm statistic) x accumulation steps x processes",
    ]
    columns = (f"{'#':>2}  {'variant':<30} {'compared with':<22} {'params here':>11} {'GMACs here':>10} "
               f"{'GMACs @224':>10} {'paper top-1':>11}  {'recipe':<7} {'epochs':>6} {'batch':>16} {'peak lr':>8} "
               f"{'finished':>8}")
    lines += [columns, "-" * len(columns)]
    for index, row in enumerate(rows):
        batch = f"{row['micro_batch']}x{row['accumulation_steps']}x{row['processes']}"
        line = (f"{index:>2}  {row['variant']:<30} {row['baseline'] or '-':<22} "
                f"{_number(row['params'] / 1e6 if row['params'] else None, '.3f') + ' M':>11} "
                f"{_number(row['gmacs'], '.4g'):>10} {_number(row['paper_scale_gmacs'], '.3f'):>10} "
                f"{_number(row['paper_top1'], '.2f'):>11}  {row['recipe']:<7} {row['epochs']:>6} {batch:>16} "
                f"{row['peak_lr']:>8.2e} {_finished_seeds(row, plan.seeds, finished):>8}")
        lines.append(line + ("" if row["trains"] else f"  not trained: {row['note']}"))
    return "\n".join(lines)


def _finished_seeds(row: dict, seeds: tuple[int, ...], finished: frozenset[tuple[str, int]]) -> str:
    """"2/3": seeds of the variant already finished in the store; "-" for a variant that trains nothing."""
    return f"{sum((row['config_hash'], seed) in finished for seed in seeds)}/{len(seeds)}" if row["trains"] else "-"


def format_estimate_table(plan: StudyPlan, estimate: PlanEstimate) -> str:
    """Each variant's cost on the target device and what its Δ can resolve; the totals and the power line."""
    cost, power = estimate.cost, estimate.power
    unit = cost.unit
    lines = [
        "",
        f"cost on {cost.target} ({unit} = images / img/s per device; one run = {cost.sizes.train:,} training images "
        f"an epoch (whole batches) + an evaluation of {cost.sizes.val:,}) and power of each Δ (points of top-1; "
        f"noise = per-run std of top-1, never below the binomial floor of the validation set; two-sided t-test "
        f"over seeds, α {power.alpha:g}, {100 * power.power:.0f} % power, {power.seeds} seed(s) a side)",
    ]
    columns = (f"{'variant':<30} {'train/eval img/s':>17} {'source':<9} {unit + '/run':>13} "
               f"{unit + ' all':>13} {'noise':>6} {'source':<12} {'min |Δ|':>7} {'paper Δ':>7}  verdict")
    lines += [columns, "-" * len(columns)]
    for variant in plan.variants:
        fields = estimate.variant_fields(variant.name)
        if fields["rate_source"] is None and fields["verdict"] is None:
            continue
        rates = (f"{_number(fields['train_img_per_s'], '.4g')}/{_number(fields['eval_img_per_s'], '.4g')}"
                 if fields["train_img_per_s"] is not None else "-")
        delta = power.of(variant.name)
        lines.append(
            f"{variant.name:<30} {rates:>17} {fields['rate_source'] or '-':<9} "
            f"{_number(fields['gpu_hours'], '.3g'):>13} {_number(fields['variant_gpu_hours'], '.3g'):>13} "
            f"{_number(fields['noise_std'], '.2f'):>6} {fields['noise_source'] or '-':<12} "
            f"{_number(fields['min_detectable_delta'], '.2f'):>7} {_number(fields['paper_delta'], '+.2f'):>7}  "
            + (delta.verdict_text() + (" (floor)" if delta.floor_binds else "") if delta else "-"))
    lines += [_totals(estimate), *_sources(estimate), power.describe()]
    return "\n".join(lines)


def _totals(estimate: PlanEstimate) -> str:
    cost = estimate.cost
    finished = len(cost.units) - len(cost.remaining)
    head = f"total: {_number(cost.total_hours, '.3g')} {cost.unit} for {len(cost.units)} run(s)"
    if finished:
        head += f"; {finished} finished in the store, {_number(cost.remaining_hours, '.3g')} {cost.unit} to go"
    largest = ", ".join(f"{run.variant} {run.variant_hours:.3g}" for run in cost.largest())
    return (f"{head}; makespan {_number(cost.makespan_hours, '.3g')} h ({cost.describe_slots()})"
            + (f"; largest: {largest}" if largest else ""))


def _sources(estimate: PlanEstimate) -> list[str]:
    """Where the img/s and the noise come from, and what would measure what is unknown."""
    cost = estimate.cost
    lines = []
    settings: dict[str, dict[str, int]] = {}  # source -> what was measured -> variants
    for run in cost.runs:
        if run.known:
            setting = run.throughput.detail.split(": ", 1)[-1]  # without "--benchmark run <id>"
            found = settings.setdefault(str(run.throughput.source), {})
            found[setting] = found.get(setting, 0) + 1
    for source, found in settings.items():
        lines.append(f"img/s from {source}: " + "; ".join(f"{setting} ({count} variant(s))"
                                                         for setting, count in found.items()))
    if cost.unknown:
        lines.append(f"img/s unknown for {len(cost.unknown)} variant(s) on {cost.target} (no measurement here, no "
                     f"--benchmark or finished run of their configuration on it in the store): measure with "
                     f"`{cost.measure_command or 'the same command with --plan-measure'}` on the target machine, "
                     "or add --plan-measure to this dry run there")
    expected = sorted({delta.noise.expected_from for delta in estimate.power.deltas})
    if expected:
        lines.append("floor taken at: " + "; ".join(expected))
    return lines
