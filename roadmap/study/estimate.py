"""Know before you launch: a plan's cost (roadmap.study.cost) and the power of its Δs (roadmap.report.power),
from this machine, the tracking store and the options; the budget check; the `plan_costs` section of plan.json.

plan.json keeps the plan exactly as `StudyPlan.to_json` writes it and adds one top-level key, `plan_costs`
(`PlanEstimate.to_dict`), which `StudyPlan.from_json` does not read: old readers and new ones load the same plan.
"""
from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..report.power import (
    MAX_AFFORDABLE_SEEDS,
    NoiseEvidence,
    SeedSpread,
    StudyPower,
    Verdict,
    plan_power,
    pooled_std,
    spreads_by_hash,
    with_finished,
)
from ..spec import positive_number
from ..variants import StudyPlan
from .cost import StudyCost, Throughput, split_sizes, study_cost, target_device
from .settings import Launcher, Study

# The keys each variant gains in `--dry-run --json` and in plan.json's plan_costs (README, "Is a step's effect
# real?"): images of one run, img/s per device and its source, GPU-hours (CPU-hours on a CPU) of one run and of
# all seeds, the Δ's noise (points) and its source, the validation floor (points) and the expected top-1 (%) it
# is taken at, the minimum detectable |Δ| and the paper's Δ (points), the seeds that Δ needs and the verdict.
ESTIMATE_KEYS = ("train_images", "eval_images", "train_img_per_s", "eval_img_per_s", "rate_source", "rate_detail",
                 "gpu_hours", "variant_gpu_hours", "noise_std", "noise_source", "noise_detail", "floor_std",
                 "expected_top1", "min_detectable_delta", "paper_delta", "seeds_needed", "verdict")


# The estimate's options that take a value.
ESTIMATE_OPTIONS = ("--plan-device", "--pilot-study", "--noise-prior", "--expected-top1", "--budget-gpu-hours")


class BudgetExceeded(SpecError):
    """A plan that costs more than --budget-gpu-hours, or whose cost is unknown: refused before any submission."""


@dataclass(frozen=True)
class EstimateSettings:
    """How the estimate is made: measure here or not, the target GPU, the noise's pilot and prior, the budget."""

    measure: bool = False  # --plan-measure
    gpu_model: str | None = None  # --plan-device: the target GPU's name, as torch.cuda.get_device_name() says it
    pilot_study: str | None = None  # --pilot-study: a parent run id of this experiment
    noise_prior: float | None = None  # --noise-prior: seed-to-seed std of top-1, points
    expected_top1: float | None = None  # --expected-top1: %, where the validation floor is taken
    budget_gpu_hours: float | None = None  # --budget-gpu-hours
    # The command that measures the img/s on the target machine (said where it is unknown).
    measure_command: str = ""

    def __post_init__(self) -> None:
        if self.noise_prior is not None:
            positive_number("--noise-prior", self.noise_prior)
        if self.budget_gpu_hours is not None:
            positive_number("--budget-gpu-hours", self.budget_gpu_hours)
        if self.expected_top1 is not None and not 0 < self.expected_top1 < 100:
            raise SpecError(f"--expected-top1={self.expected_top1} is not valid; a top-1 in % between 0 and 100")


@dataclass(frozen=True)
class PlanEstimate:
    """A plan's cost and the power of its Δs."""

    cost: StudyCost
    power: StudyPower

    def variant_fields(self, name: str) -> dict[str, Any]:
        """ESTIMATE_KEYS of one variant (None where it does not apply: not trained, or no baseline)."""
        fields: dict[str, Any] = dict.fromkeys(ESTIMATE_KEYS)
        run = self.cost.run(name)
        if run is not None:
            rate = run.throughput
            fields.update(train_images=run.train_images, eval_images=run.eval_images,
                          train_img_per_s=_finite(rate.train_img_per_s), eval_img_per_s=_finite(rate.eval_img_per_s),
                          rate_source=str(rate.source), rate_detail=rate.detail or None,
                          gpu_hours=_finite(run.device_hours), variant_gpu_hours=_finite(run.variant_hours))
        delta = self.power.of(name)
        if delta is not None:
            details = dict.fromkeys([f"{name}: {delta.noise.detail}",
                                     f"{delta.baseline}: {delta.baseline_noise.detail}"])
            fields.update(noise_std=delta.noise_std, noise_source=delta.noise_source, noise_detail="; ".join(details),
                          floor_std=max(delta.noise.floor_std, delta.baseline_noise.floor_std),
                          expected_top1=delta.noise.expected_top1,
                          min_detectable_delta=_finite(delta.min_detectable_delta),
                          paper_delta=_finite(delta.paper_delta), seeds_needed=delta.seeds_needed,
                          verdict=str(delta.verdict))
        return fields

    def summary_fields(self) -> dict[str, Any]:
        """The plan-wide figures of `--dry-run --json` and plan_costs."""
        cost, power = self.cost, self.power
        return {
            "hours_unit": cost.unit, "target_device": cost.target or None, "launcher": cost.launcher,
            "parallel_jobs": cost.slots, "train_images_per_epoch": cost.sizes.train, "val_images": cost.sizes.val,
            "total_gpu_hours": _finite(cost.total_hours), "remaining_gpu_hours": _finite(cost.remaining_hours),
            "makespan_hours": _finite(cost.makespan_hours), "runs": len(cost.units),
            "finished_runs": len(cost.units) - len(cost.remaining), "unknown_rates": list(cost.unknown),
            "measure_command": cost.measure_command if cost.unknown else None,
            "alpha": power.alpha, "power": power.power, "affordable_seeds": power.affordable_seeds,
            "resolvable": power.count(Verdict.RESOLVABLE),
            "paper_deltas": sum(delta.verdict != Verdict.NO_PAPER_DELTA for delta in power.deltas),
        }

    def to_dict(self, plan: StudyPlan) -> dict[str, Any]:
        """plan.json's plan_costs: the plan-wide figures and each variant's (ESTIMATE_KEYS)."""
        return {**self.summary_fields(),
                "variants": [{"variant": name, **self.variant_fields(name)} for name in plan.names()]}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def estimate_plan(study: Study, settings: EstimateSettings) -> PlanEstimate:
    """The plan's cost and power from this machine (--plan-measure), the study's tracking store and the options.

    Reading the store never creates it; a store or experiment that does not exist yet contributes nothing."""
    from ..tracking import experiment_exists

    plan = study.plan
    trained = plan.trained()
    sizes = split_sizes(trained[0].data) if trained else None
    in_store = bool(trained) and experiment_exists(study.tracking_uri, study.experiment, study.tracking_patience_s)
    if settings.pilot_study and not in_store:
        raise SpecError(f"--pilot-study {settings.pilot_study}: experiment {study.experiment!r} does not exist in the "
                        "tracking store; the pilot must be a study of the same experiment")
    if study.run.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # the threads a training process uses
        import torch

        from .unit import cpu_threads

        torch.set_num_threads(cpu_threads(trained[0].processes if trained else 1, study.run.loader_workers()))
    target = target_device(study.run.device, settings.gpu_model)
    cost = _cost(study, settings, sizes, target, in_store)
    evidence = _evidence(study, settings, in_store)
    affordable, affordable_from = MAX_AFFORDABLE_SEEDS, "the default"
    per_seed = cost.total_hours / len(plan.seeds) if trained else math.nan
    if settings.budget_gpu_hours is not None and math.isfinite(per_seed) and per_seed > 0:
        affordable = max(1, math.floor(settings.budget_gpu_hours / per_seed))
        affordable_from = f"what --budget-gpu-hours {settings.budget_gpu_hours:g} affords"
    power = plan_power(plan, evidence, sizes.val if sizes else 1, affordable_seeds=affordable,
                       affordable_from=affordable_from)
    return PlanEstimate(cost, power)


def _cost(study: Study, settings: EstimateSettings, sizes, target, in_store: bool) -> StudyCost:
    from ..schema import RunKind
    from ..tracking import load_step_runs

    plan = study.plan
    rates: list[dict[str, Throughput]] = []
    finished: frozenset[tuple[str, int]] = frozenset()
    if settings.measure and plan.trained():
        from .cost import measure_rates

        rates.append(measure_rates(plan.trained(), study.run.device, channels_last=study.run.channels_last,
                                   compile=study.run.compile, progress=study.run.progress))
    if in_store:
        from .cost import benchmark_rates, finished_units, run_rates

        uri, patience = study.tracking_uri, study.tracking_patience_s
        step_runs = load_step_runs(uri, study.experiment, RunKind.STEP, patience_s=patience)
        if target.described:
            rates.append(benchmark_rates(load_step_runs(uri, study.experiment, RunKind.BENCHMARK,
                                                        patience_s=patience), target.described))
        if target.model:
            rates.append(run_rates(step_runs, target.model))
        finished = frozenset() if study.force else finished_units(step_runs)
    return study_cost(plan, sizes or split_sizes(plan.variants[0].data), rates, unit=target.unit,
                      target=target.described or "cuda (GPU model unknown here: give --plan-device)",
                      launcher=str(study.launch.launcher), slots=_slots(study), finished=finished,
                      measure_command=settings.measure_command)


def _slots(study: Study) -> int | None:
    """Runs at once: inline one; local as the local launcher counts them; SLURM its throttle (None: no limit)."""
    launch = study.launch
    if launch.launcher == Launcher.INLINE:
        return 1
    if launch.launcher == Launcher.SLURM:
        return launch.max_parallel
    import torch

    from .checks import gpus_per_job
    from .executors.local import local_slots

    visible = tuple(range(torch.cuda.device_count())) if study.run.device == "cuda" else ()
    return local_slots(launch.max_parallel, gpus_per_job(study), visible)


def _evidence(study: Study, settings: EstimateSettings, in_store: bool) -> dict[str, NoiseEvidence]:
    """Per variant: its configuration's finished seeds in the store, the pilot's of the same variant, the prior."""
    plan = study.plan
    value = "top1" if plan.report == "last" else "top1_best"
    store: dict[str, SeedSpread] = {}
    pilot: dict[str, SeedSpread] = {}
    pooled = math.nan
    if in_store:
        from ..report.results import plan_runs
        from ..report.runs_table import load_runs

        runs = load_runs(study.tracking_uri, study.experiment)
        store = spreads_by_hash(runs, value)
        if settings.pilot_study:
            from ..report.studies import StudyNotFound, find_study

            try:
                pilot_plan = find_study(study.tracking_uri, study.experiment, settings.pilot_study).plan
            except StudyNotFound as error:
                raise StudyNotFound(f"--pilot-study: {error}".replace("--study-run ", "")) from None
            by_hash = spreads_by_hash(plan_runs(runs, pilot_plan), value)
            pilot = {variant.name: by_hash[variant.config_hash] for variant in pilot_plan.variants
                     if variant.config_hash in by_hash}
            pooled = pooled_std(list(by_hash.values()))
    evidence = {}
    for variant in plan.variants:
        if settings.noise_prior is not None:
            prior, prior_name = settings.noise_prior, "--noise-prior"
        else:
            prior = variant.paper.top1_std
            prior_name = f"the paper's top1_std ({plan.roadmap.paper_table or 'paper'}, at its own scale)"
        evidence[variant.name] = NoiseEvidence(
            store=store.get(variant.config_hash, SeedSpread()), pilot=pilot.get(variant.name, SeedSpread()),
            pilot_pooled_std=pooled, pilot_name=settings.pilot_study or "", prior_std=prior, prior_name=prior_name,
            expected_top1=math.nan if settings.expected_top1 is None else settings.expected_top1)
    return evidence


def budget_refusal(estimate: PlanEstimate, budget_gpu_hours: float | None) -> str | None:
    """The one line refusing a plan that costs more than the budget (or whose cost is unknown); None if it fits."""
    if budget_gpu_hours is None:
        return None
    cost = estimate.cost
    option = f"--budget-gpu-hours {budget_gpu_hours:g}"
    largest = ", ".join(f"{run.variant} {run.variant_hours:.3g}" for run in cost.largest())
    unknown = [run.variant for run in cost.runs if not run.known
               and any(config_hash == run.config_hash for config_hash, _ in cost.remaining)]
    if unknown:
        return (f"{option} cannot be checked: the img/s of {len(unknown)} variant(s) on {cost.target} is unknown "
                f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}); measure it with "
                f"`{cost.measure_command or 'the same command with --dry-run --plan-measure'}` on the target machine")
    if cost.remaining_hours > budget_gpu_hours:
        return (f"{option}: this plan needs {cost.remaining_hours:.3g} {cost.unit} ({len(cost.remaining)} run(s) to "
                f"train on {cost.target}); largest: {largest} ({cost.unit} over {estimate.power.seeds} seed(s)); "
                "fewer seeds, an earlier --upto or a smaller preset cost less")
    return None


def plan_json(plan: StudyPlan, estimate: PlanEstimate | None) -> str:
    """plan.json: the plan as StudyPlan.to_json writes it, plus `plan_costs` (which StudyPlan.from_json ignores)."""
    if estimate is None:
        return plan.to_json()
    raw = json.loads(plan.to_json())
    raw["plan_costs"] = estimate.to_dict(plan)
    return json.dumps(raw, indent=2, sort_keys=True) + "\n"


def closing_power_line(estimate: PlanEstimate | None, plan: StudyPlan, summary) -> str:
    """A finished study's power line: the same figures with its own finished seeds as the noise (the store)."""
    if estimate is None or not estimate.power.deltas:
        return ""
    return with_finished(estimate.power, plan, summary).describe()


def settings_from_options(options: dict[str, Any], argv: list[str]) -> EstimateSettings:
    """The estimate's settings from run_ablation.py's options; `argv` (its arguments) names the measuring command."""
    kept, arguments = [], iter(argv)
    for arg in arguments:  # without the dry run's own flags and the estimate's options (--benchmark ignores them)
        if arg.split("=", 1)[0] in ESTIMATE_OPTIONS:
            if "=" not in arg:
                next(arguments, None)  # its value
        elif arg not in ("--dry-run", "--json", "--plan-measure"):
            kept.append(arg)
    return EstimateSettings(
        measure=options["plan_measure"], gpu_model=options["plan_device"], pilot_study=options["pilot_study"],
        noise_prior=options["noise_prior"], expected_top1=options["expected_top1"],
        budget_gpu_hours=options["budget_gpu_hours"],
        measure_command=shlex.join(["python", "run_ablation.py", *kept, "--benchmark"]))
