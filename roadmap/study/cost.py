"""What a study costs before it runs: the images each run processes, its img/s on the target device and where
that figure comes from, device-hours per run, per variant and in total, and the makespan under the launcher.

The img/s comes, in order, from a short measurement here (`--plan-measure`), from earlier `--benchmark` runs of
the same configuration on the same device model, from finished training runs of it on that model (their
wall time), or it is unknown: never a made-up figure. A device is one GPU, or on a CPU one training process;
several processes of one run are assumed to scale linearly (device-hours stay, wall time divides).
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..schema import Metric, Status, Tag
from ..spec import DataSpec
from ..variants import StudyPlan, Variant

# CIFAR's fixed splits (both torchvision classes).
CIFAR_SPLITS = (50_000, 10_000)


class RateSource(StrEnum):
    """Where a variant's img/s comes from, in the order they are tried."""

    MEASURED = "measured"  # --plan-measure: timed here, at the study's micro-batch, resolution and precision
    BENCHMARK = "benchmark"  # the latest --benchmark run of this configuration on the target device model
    RUNS = "runs"  # finished training runs of this configuration on the target device model: their wall time
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Throughput:
    """A variant's speed on one device (one GPU; on a CPU one training process)."""

    source: RateSource
    # Which measurement: device, batch, resolution, precision (or the runs it averages).
    detail: str = ""
    train_img_per_s: float = math.nan  # forward + backward + optimizer step
    eval_img_per_s: float = math.nan
    # RateSource.RUNS only: the device-hours one finished run took (wall time x processes), evaluation,
    # data loading and logging included.
    run_device_hours: float = math.nan


UNKNOWN = Throughput(RateSource.UNKNOWN)


@dataclass(frozen=True)
class SplitSizes:
    """Images in the data set's training and validation splits."""

    train: int
    val: int


def split_sizes(data: DataSpec) -> SplitSizes:
    """The splits' sizes: synthetic from the spec, CIFAR's fixed ones, an image folder's files counted."""
    if data.kind == "synthetic":
        return SplitSizes(data.train_size, data.val_size)
    if data.kind in ("cifar10", "cifar100"):
        return SplitSizes(*CIFAR_SPLITS)
    from pathlib import Path

    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    def count(split: str) -> int:
        root = Path(data.path) / split
        return len(make_dataset(str(root), find_classes(str(root))[1], extensions=IMG_EXTENSIONS))

    return SplitSizes(count("train"), count("val"))


@dataclass(frozen=True)
class RunCost:
    """One run (one seed) of a variant: what it processes and what it costs on the target device."""

    variant: str
    config_hash: str
    # Images through forward + backward over all epochs (whole optimizer steps: a partial batch is dropped).
    train_images: int
    # Validation images over all epochs (every epoch ends with an evaluation).
    eval_images: int
    processes: int
    seeds: int
    throughput: Throughput

    @property
    def device_hours(self) -> float:
        """GPU-hours (CPU-hours) of one run; NaN when the img/s is unknown."""
        rate = self.throughput
        if rate.source == RateSource.RUNS:
            return rate.run_device_hours
        return (self.train_images / rate.train_img_per_s + self.eval_images / rate.eval_img_per_s) / 3600

    @property
    def wall_hours(self) -> float:
        """Hours one run takes from start to end on its `processes` devices."""
        return self.device_hours / self.processes

    @property
    def variant_hours(self) -> float:
        """Device-hours of every planned seed of this variant."""
        return self.device_hours * self.seeds

    @property
    def known(self) -> bool:
        return math.isfinite(self.device_hours)


def run_images(variant: Variant, sizes: SplitSizes) -> tuple[int, int]:
    """(trained, evaluated) images of one run of `variant` on splits of `sizes`."""
    recipe = variant.recipe
    per_epoch = sizes.train // recipe.batch_size * recipe.batch_size
    return per_epoch * recipe.epochs, sizes.val * recipe.epochs


def makespan(durations: Sequence[float], slots: int | None) -> float:
    """Hours until the last of `durations` ends when they start in order, each on the first free slot of
    `slots` (None: as many as there are); queue waits not included."""
    if not durations:
        return 0.0
    if slots is None or slots >= len(durations):
        return max(durations)
    ends = [0.0] * slots
    for duration in durations:
        heapq.heappush(ends, heapq.heappop(ends) + duration)
    return max(ends)


@dataclass(frozen=True)
class StudyCost:
    """The cost of a plan on its target device, and how long it takes under its launcher."""

    unit: str  # "GPU-hours" or "CPU-hours"
    target: str  # the target device, e.g. "cuda (NVIDIA H100 80GB HBM3)"
    runs: tuple[RunCost, ...]  # one per trained variant, in plan order
    # The (config_hash, seed) units the study trains, in the launcher's order; those finished in the store
    # (skipped unless --force).
    units: tuple[tuple[str, int], ...]
    finished: frozenset[tuple[str, int]]
    launcher: str
    slots: int | None  # jobs at once (None: no limit)
    sizes: SplitSizes
    # What to run to measure the unknown img/s.
    measure_command: str = ""

    def run(self, variant: str) -> RunCost | None:
        return next((run for run in self.runs if run.variant == variant), None)

    def _by_hash(self) -> dict[str, RunCost]:
        by_hash: dict[str, RunCost] = {}
        for run in self.runs:
            by_hash.setdefault(run.config_hash, run)
        return by_hash

    def _hours(self, units: Iterable[tuple[str, int]], per_unit) -> float:
        by_hash = self._by_hash()
        return float(sum(per_unit(by_hash[config_hash]) for config_hash, _ in units))

    @property
    def total_hours(self) -> float:
        """Device-hours of every unit of the plan; NaN when any img/s is unknown."""
        return self._hours(self.units, lambda run: run.device_hours)

    @property
    def remaining(self) -> tuple[tuple[str, int], ...]:
        return tuple(unit for unit in self.units if unit not in self.finished)

    @property
    def remaining_hours(self) -> float:
        """Device-hours of the units not finished in the store: what running the plan now spends."""
        return self._hours(self.remaining, lambda run: run.device_hours)

    @property
    def makespan_hours(self) -> float:
        """Wall hours of the remaining units under the launcher; NaN when any img/s is unknown."""
        by_hash = self._by_hash()
        return makespan([by_hash[config_hash].wall_hours for config_hash, _ in self.remaining], self.slots)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(run.variant for run in self.runs if not run.known)

    def largest(self, count: int = 3) -> list[RunCost]:
        """The variants that cost most over their seeds (known ones only)."""
        return sorted((run for run in self.runs if run.known), key=lambda run: -run.variant_hours)[:count]

    def describe_slots(self) -> str:
        if self.launcher == "inline":
            return "inline: one run after another"
        return f"{self.launcher}: " + (f"{self.slots} job(s) at once" if self.slots else "every job at once") + \
            ", queue waits not included"


# ------------------------------------------------------------------------------- rates from the store


def device_part(description: str) -> str:
    """"cuda (NVIDIA H100)" of a benchmark description "cuda (NVIDIA H100), batch 128, 160x160 px, ..."."""
    return description.split(", batch ", 1)[0].strip()


def benchmark_rates(runs: Iterable, target: str) -> dict[str, Throughput]:
    """Per configuration hash, the newest --benchmark run (TrackedRun, newest first) on the `target` device."""
    rates: dict[str, Throughput] = {}
    for run in runs:
        config_hash, description = run.tags.get(Tag.CONFIG_HASH, ""), run.tags.get(Tag.BENCHMARK, "")
        train = run.metrics.get(Metric.BENCH_TRAIN_IMG_PER_S, math.nan)
        evaluation = run.metrics.get(Metric.BENCH_EVAL_IMG_PER_S, math.nan)
        if (config_hash and config_hash not in rates and device_part(description) == target
                and math.isfinite(train) and math.isfinite(evaluation) and train > 0 and evaluation > 0):
            rates[config_hash] = Throughput(RateSource.BENCHMARK, f"--benchmark run {run.run_id}: {description}",
                                            train, evaluation)
    return rates


def run_rates(runs: Iterable, target_model: str) -> dict[str, Throughput]:
    """Per configuration hash, the mean device-hours of its finished training runs (TrackedRun) on `target_model`
    (the `device` tag "<model> x<processes>")."""
    hours: dict[str, list[float]] = {}
    for run in runs:
        model, _, processes = run.tags.get(Tag.DEVICE, "").rpartition(" x")
        wall = run.metrics.get(Metric.WALL_TIME_S, math.nan)
        if (run.mlflow_status == "FINISHED" and run.tags.get(Tag.STATUS, Status.FINISHED) == Status.FINISHED
                and model == target_model and processes.isdigit() and math.isfinite(wall)):
            hours.setdefault(run.tags.get(Tag.CONFIG_HASH, ""), []).append(wall * int(processes) / 3600)
    return {config_hash: Throughput(RateSource.RUNS, f"mean wall time x processes of {len(values)} finished "
                                    f"run(s) on {target_model}", run_device_hours=sum(values) / len(values))
            for config_hash, values in hours.items() if config_hash}


def finished_units(runs: Iterable) -> frozenset[tuple[str, int]]:
    """(config_hash, seed) of the finished training runs (TrackedRun): a study skips them."""
    return frozenset((run.tags.get(Tag.CONFIG_HASH, ""), int(run.tags[Tag.SEED])) for run in runs
                     if run.mlflow_status == "FINISHED" and run.tags.get(Tag.SEED, "").isdigit())


def unit_keys(plan: StudyPlan) -> tuple[tuple[str, int], ...]:
    """(config_hash, seed) of every unit the plan trains, in the launcher's order (plan order, seeds inner)."""
    units: dict[tuple[str, int], None] = {}
    for variant in plan.trained():
        for seed in plan.seeds:
            units.setdefault((variant.config_hash, seed), None)
    return tuple(units)


def study_cost(plan: StudyPlan, sizes: SplitSizes, rates: Sequence[dict[str, Throughput]], *, unit: str,
               target: str, launcher: str, slots: int | None,
               finished: frozenset[tuple[str, int]] = frozenset(), measure_command: str = "") -> StudyCost:
    """The cost of `plan`: each trained variant's img/s from the first of `rates` (dicts by hash) that has it."""
    runs = []
    for variant in plan.trained():
        throughput = next((found[variant.config_hash] for found in rates if variant.config_hash in found), UNKNOWN)
        train, evaluation = run_images(variant, sizes)
        runs.append(RunCost(variant.name, variant.config_hash, train, evaluation, variant.processes,
                            len(plan.seeds), throughput))
    return StudyCost(unit, target, tuple(runs), unit_keys(plan), finished, launcher, slots, sizes, measure_command)


# ------------------------------------------------------------------------------------ rates measured here


@dataclass(frozen=True)
class TargetDevice:
    """The device a study trains on, as --benchmark descriptions and training runs' `device` tags name it."""

    kind: str  # "cuda" or "cpu"
    # --benchmark's device part: "cuda (NVIDIA H100 80GB HBM3)", "cpu (2 threads)"; "" when the GPU is not known.
    described: str
    # A training run's `device` tag before " x<processes>": the GPU's name, or "cpu".
    model: str

    @property
    def unit(self) -> str:
        return "GPU-hours" if self.kind == "cuda" else "CPU-hours"


def target_device(device: str, gpu_model: str | None = None) -> TargetDevice:
    """This machine's device, or for CUDA the GPU named `gpu_model` (--plan-device) when given."""
    import torch

    from ..training.throughput import device_name

    if device == "cuda":
        model = gpu_model or (torch.cuda.get_device_name() if torch.cuda.is_available() else "")
        return TargetDevice("cuda", f"cuda ({model})" if model else "", model)
    return TargetDevice("cpu", device_name("cpu"), "cpu")


def measure_rates(variants: Sequence[Variant], device: str, *, channels_last: bool, compile: bool,
                  progress: bool = False) -> dict[str, Throughput]:
    """Each configuration timed here for a few seconds with the benchmark code, at its micro-batch (the batch of
    a forward pass), resolution and precision. The timed step updates the weights at every batch, which a run
    with gradient accumulation does once per group: a slight overestimate of its time."""
    from ..training.throughput import BenchmarkConfig, benchmark_steps

    rates: dict[str, Throughput] = {}
    for variant in variants:
        if variant.config_hash in rates:
            continue
        data = variant.data
        config = BenchmarkConfig(
            device=device, batch_size=variant.micro_batch, image_size=data.image_size, precision=variant.precision,
            channels_last=channels_last, compile=compile, warmup=3 if device == "cuda" else 1, repeats=3,
            iterations_per_repeat=5 if device == "cuda" else 2,
            num_classes=data.num_classes if data.kind == "synthetic" else 1000)
        (row,) = benchmark_steps([variant], config, width_multiplier=variant.arch.width_multiplier,
                                 progress=progress)
        rates[variant.config_hash] = Throughput(RateSource.MEASURED, f"measured here: {config.describe()}",
                                                row["train_img_per_s"], row["eval_img_per_s"])
    return rates
