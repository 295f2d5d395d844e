"""One study: every (step, seed) of a plan trained, evaluated and tracked, then the results table written."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from . import distributed
from .complexity import count_complexity
from .data import Datasets, build_datasets, build_loaders, validate_data
from .engine import TrainOptions, train_and_evaluate
from .model import build_model
from .presets import Preset, apply_preset, get_preset
from .spec import ArchSpec, DataSpec, RecipeSpec, SpecError, spec_hash, to_dict
from .steps import Roadmap, Step


@dataclass(frozen=True)
class StudyOptions:
    """Everything one invocation of run_ablation.py decided, validated."""

    roadmap: Roadmap
    steps: tuple[Step, ...]
    seeds: tuple[int, ...]
    preset: Preset
    data: DataSpec
    # Explicit overrides of the preset (None: the preset's value).
    epochs: int | None
    batch_size: int | None
    image_size: int | None
    width_multiplier: float | None
    lr: float | None
    workers: int | None
    micro_batch: int | None
    device: str
    precision: str
    channels_last: bool
    compile: bool
    sync_batchnorm: bool
    tracking_uri: str | None
    experiment: str
    force: bool
    checkpoint_dir: Path
    results_dir: Path
    bench_batch_size: int
    bench_repeats: int
    progress: bool

    @classmethod
    def from_cli(cls, roadmap: Roadmap, steps: list[Step], seeds: list[int], options: dict[str, Any]) -> StudyOptions:
        data = DataSpec(source=options["data"], download=options["download"])
        preset = get_preset(options["preset"] or ("demo" if data.kind == "synthetic" else "paper"))
        device = options["device"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        for name in ("micro_batch", "workers", "bench_batch_size", "bench_repeats"):
            value = options.get(name)
            if value is not None and value < (0 if name == "workers" else 1):
                raise SpecError(f"--{name.replace('_', '-')}={value} is not valid; a whole number >= "
                                f"{0 if name == 'workers' else 1}")
        return cls(
            roadmap=roadmap, steps=tuple(steps), seeds=tuple(seeds), preset=preset, data=data,
            epochs=options["epochs"], batch_size=options["batch_size"], image_size=options["image_size"],
            width_multiplier=options["width_mult"], lr=options["lr"], workers=options["workers"],
            micro_batch=options["micro_batch"], device=device,
            # bf16 autocast is for GPUs: on a CPU without bf16 units it runs ~15x slower than fp32.
            precision=options["precision"] or (preset.precision if device == "cuda" else "fp32"),
            channels_last=preset.channels_last if options["channels_last"] is None else options["channels_last"],
            compile=options["compile_model"],
            sync_batchnorm=options["sync_bn"], tracking_uri=options["tracking_uri"],
            experiment=options["experiment"] or roadmap.name, force=options["force"],
            checkpoint_dir=options["checkpoint_dir"], results_dir=options["results_dir"],
            bench_batch_size=options["bench_batch_size"], bench_repeats=options["bench_repeats"],
            progress=not options["no_progress"],
        )

    def resolve(self, step: Step) -> tuple[ArchSpec, RecipeSpec, DataSpec]:
        """The step's specs at this study's scale."""
        arch, recipe, data = apply_preset(
            self.preset, step.arch, step.recipe, self.data, epochs=self.epochs, batch_size=self.batch_size,
            image_size=self.image_size, width_multiplier=self.width_multiplier, lr=self.lr,
        )
        if self.workers is not None:
            data = dataclasses.replace(data, workers=self.workers)
        return arch, recipe, data

    def configuration(self, step: Step) -> dict[str, Any]:
        """The resolved configuration of a step: what its hash, its MLflow params and config.json hold."""
        arch, recipe, data = self.resolve(step)
        return {
            "roadmap": self.roadmap.name, "step": step.name, "preset": self.preset.name,
            "arch": to_dict(arch), "recipe": to_dict(recipe), "data": to_dict(data),
            "precision": self.precision,
        }


def batch_split(recipe: RecipeSpec, world_size: int, micro_batch: int | None,
                accumulation_steps: int = 1) -> tuple[int, int]:
    """(per-process micro-batch, accumulation steps) that make up the recipe's effective batch.

    `micro_batch` wins; without it the preset's accumulation steps split the per-process batch.
    """
    if recipe.batch_size % world_size:
        raise SpecError(f"batch size {recipe.batch_size} does not divide across {world_size} processes; "
                        f"choose a multiple of {world_size}")
    per_process = recipe.batch_size // world_size
    if not micro_batch and per_process % accumulation_steps:
        raise SpecError(f"the per-process batch {per_process} does not split into {accumulation_steps} "
                        "accumulation steps; choose --micro-batch")
    micro = min(micro_batch or per_process // accumulation_steps, per_process)
    if per_process % micro:
        raise SpecError(f"--micro-batch={micro} does not divide the per-process batch {per_process} "
                        f"(batch size {recipe.batch_size} / {world_size} processes)")
    return micro, per_process // micro


class DatasetCache:
    """Builds each (data, transforms) pair once per study: steps share data unless their recipe differs."""

    def __init__(self) -> None:
        self._built: dict[str, Datasets] = {}

    def get(self, data: DataSpec, recipe: RecipeSpec) -> Datasets:
        key = spec_hash(data, recipe)
        if key not in self._built:
            self._built[key] = build_datasets(data, recipe)
        return self._built[key]


def _step_tags(study: StudyOptions, step: Step, seed: int, datasets: Datasets, world: distributed.WorldInfo) -> dict:
    from .tracking import environment_tags

    device = torch.cuda.get_device_name() if study.device == "cuda" else "cpu"
    return {
        "step": step.name, "order": step.order, "group": step.group, "adopted": step.adopted,
        "parent_step": step.parent or "", "seed": seed, "roadmap": study.roadmap.name,
        "dataset": datasets.description, "preset": study.preset.name,
        "device": f"{device} x{world.world_size}", **environment_tags(),
    }


def validate_study(study: StudyOptions, world_size: int = 1) -> None:
    """Every check that can fail before the first step trains: specs, batch splits, data."""
    for step in study.steps:
        _, recipe, data = study.resolve(step)
        batch_split(recipe, world_size, study.micro_batch, study.preset.accumulation_steps)
    validate_data(study.resolve(study.steps[0])[2])


def cpu_threads(world_size: int, workers: int) -> int:
    """Intra-op threads per training process that leave a core to each data-loader worker.

    More runnable threads than cores makes every OpenMP barrier wait for a descheduled thread: on
    2 cores, 2 torch threads beside 1 busy worker ran small convolutions several times slower than 1.
    """
    return max(1, (os.cpu_count() or 1) // world_size - workers)


def run_study(study: StudyOptions) -> int:
    """Train and evaluate every (step, seed), tracked in MLflow; write results/<experiment>/. Exit code."""
    world = distributed.init_distributed(study.device)
    validate_study(study, world.world_size)
    if study.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(world.world_size, study.resolve(study.steps[0])[2].workers))
    tracker = None
    if world.is_main:
        from .tracking import Tracker

        tracker = Tracker(study.tracking_uri, study.experiment)
    cache = DatasetCache()
    outcomes: list[str] = []
    trained: list[dict[str, Any]] = []  # the engine's result of every step trained by this invocation
    start = time.perf_counter()
    echo = click.echo if world.is_main else (lambda *_a, **_k: None)
    jobs = [(step, seed) for step in study.steps for seed in study.seeds]
    echo(f"{study.roadmap.title}: {len(study.steps)} steps x {len(study.seeds)} seed(s), preset {study.preset.name}, "
         f"data {study.data.source}, device {study.device} x{world.world_size}"
         f"{f' ({torch.get_num_threads()} threads)' if study.device == 'cpu' else ''}, {study.precision}; "
         f"MLflow {tracker.tracking_uri if tracker else ''} experiment {study.experiment!r}")
    study_params = {"roadmap": study.roadmap.name, "steps": ",".join(s.name for s in study.steps),
                    "seeds": ",".join(map(str, study.seeds)), "preset": study.preset.name, "data": study.data.source}
    with (tracker.study(f"{study.roadmap.name} study", study_params, {"roadmap": study.roadmap.name})
          if tracker else contextlib.nullcontext()):
        for index, (step, seed) in enumerate(jobs, start=1):
            outcome = _run_one(study, step, seed, cache, tracker, world, f"[{index}/{len(jobs)}]", trained)
            outcomes.append(outcome)
    echo(f"study done in {time.perf_counter() - start:.1f} s wall time "
         f"({sum(o == 'finished' for o in outcomes)} finished, {sum(o == 'skipped' for o in outcomes)} skipped, "
         f"{sum(o == 'diverged' for o in outcomes)} diverged)")
    if trained:
        echo(time_split(trained))
    if world.is_main:
        _write_results(study)
    distributed.cleanup()
    return 1 if "diverged" in outcomes else 0


def time_split(results: list[dict[str, Any]]) -> str:
    """Where the training time of some runs went: model steps, waiting for data, and everything else."""
    train = sum(r.get("train_s", math.nan) for r in results)  # NaN for a run finished by an older version
    wait = sum(r.get("data_wait_s", math.nan) for r in results)
    wall = sum(r["wall_time_s"] for r in results)
    return (f"time split over {len(results)} trained run(s): training loops {train:.1f} s, of which waiting for "
            f"data {wait:.1f} s (+{100 * wait / max(train - wait, 1e-9):.1f} % on the model steps' "
            f"{train - wait:.1f} s); evaluation, checkpoints and MLflow logging {wall - train:.1f} s")


def _run_one(study: StudyOptions, step: Step, seed: int, cache: DatasetCache, tracker, world, label: str,
             trained: list[dict[str, Any]]) -> str:
    arch, recipe, data = study.resolve(step)
    config = study.configuration(step)
    config_hash = spec_hash(config)
    finished = tracker.find_finished(step.name, seed, config_hash) if tracker else None
    # Rank 0 alone asks MLflow; every rank follows its answer.
    skip = distributed.all_gather_objects(bool(finished) and not study.force)[0]
    checkpoint_dir = study.checkpoint_dir / study.experiment / step.name / f"seed{seed}-{config_hash}"
    if skip:
        if world.is_main:
            click.echo(f"{label} {step.name} seed {seed}: finished run {finished} has this configuration; skipped "
                       "(--force re-runs it)")
        return "skipped"
    if study.force and world.is_main and (checkpoint_dir / "final.json").exists():
        shutil.rmtree(checkpoint_dir)
    distributed.barrier()
    datasets = cache.get(data, recipe)
    micro, accumulation = batch_split(recipe, world.world_size, study.micro_batch, study.preset.accumulation_steps)
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=datasets.num_classes)
    complexity = count_complexity(model, data.image_size)
    options = TrainOptions(
        checkpoint_dir=checkpoint_dir, seed=seed, device=study.device, precision=study.precision,
        channels_last=study.channels_last, compile=study.compile, accumulation_steps=accumulation,
        sync_batchnorm=study.sync_batchnorm, progress=study.progress, world=world,
    )
    train_loader, val_loader = build_loaders(datasets, micro, workers=data.workers, seed=seed, rank=world.rank,
                                             world_size=world.world_size, device=options.torch_device())
    if world.is_main:
        click.echo(f"{label} {step.name} seed {seed}: {complexity.params / 1e6:.2f} M params, "
                   f"{complexity.gmacs:.3f} GMACs at {data.image_size} px, {recipe.name} recipe, {recipe.epochs} "
                   f"epochs, batch {recipe.batch_size} ({micro} x {accumulation} accumulation x "
                   f"{world.world_size} processes), peak lr {recipe.lr():.2e}")
    if tracker is None:
        result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=datasets.num_classes,
                                    options=options)
        trained.append(result)
        return result["status"]
    tags = _step_tags(study, step, seed, datasets, world)
    params = {key: value for key, value in config.items() if key != "step"}
    with tracker.step_run(step.name, seed, config_hash, params=params, tags=tags, config=config) as run:
        if run.resumed:
            click.echo(f"{label} resuming MLflow run {run.run_id}")
        result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=datasets.num_classes,
                                    options=options, on_epoch=lambda record: run.log_epoch(record, record["epoch"]))
        trained.append(result)
        if run.resumed:
            _backfill_epochs(tracker, run, result["history"])
        final = {key: result[key] for key in ("top1", "top5", "train_img_per_s", "eval_img_per_s",
                                              "peak_memory_mb", "wall_time_s")}
        run.log_final({**final, "params": complexity.params, "gmacs": complexity.gmacs,
                       "status": result["status"], "reason": result["reason"] or "-"})
    where = "resumed from epoch " + str(result["resumed_from_epoch"]) if result["resumed_from_epoch"] else "trained"
    if result["status"] == "finished":
        click.echo(f"{label} {step.name} seed {seed}: top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} % "
                   f"on {datasets.description} val; {where}; {result['wall_time_s']:.1f} s; "
                   f"train {result['train_img_per_s']:.0f} img/s on {study.device}")
    else:
        click.echo(f"{label} {step.name} seed {seed}: DIVERGED: {result['reason']}", err=True)
    return result["status"]


def _backfill_epochs(tracker, run, history: list[dict]) -> None:
    """Log the epochs a kill left out of MLflow: checkpointed, but killed before their metrics were sent."""
    from .tracking import load_metric_history

    logged = {epoch for epoch, _ in load_metric_history(tracker.tracking_uri, run.run_id, "val_top1")}
    for record in history:
        if record["epoch"] not in logged:
            run.log_epoch(record, record["epoch"])


def _write_results(study: StudyOptions) -> None:
    from .results import study_summary, to_markdown, write_results

    summary = study_summary(study.tracking_uri, study.experiment, study.roadmap.name)
    steps = {step.name for step in study.steps}
    csv_path, md_path = write_results(summary[summary["step"].isin(steps)], study.results_dir / study.experiment)
    click.echo(to_markdown(summary[summary["step"].isin(steps)]))
    click.echo(f"results: {csv_path} and {md_path}")


def run_benchmark(study: StudyOptions) -> int:
    """Measure every step's throughput and peak memory at the study's scale; record it; print a table."""
    from .benchmark import BenchmarkConfig, benchmark_steps, format_table
    from .tracking import Tracker

    tracker = Tracker(study.tracking_uri, study.experiment)
    _, _, data = study.resolve(study.steps[0])
    config = BenchmarkConfig(
        device=study.device, batch_size=study.bench_batch_size, image_size=data.image_size,
        precision=study.precision, channels_last=study.channels_last, compile=study.compile,
        repeats=study.bench_repeats, num_classes=data.num_classes if data.kind == "synthetic" else 1000,
    )
    rows = []
    study_params = {"roadmap": study.roadmap.name, "steps": ",".join(s.name for s in study.steps),
                    "preset": study.preset.name, "benchmark": config.describe()}
    with tracker.study(f"{study.roadmap.name} benchmark", study_params, {"roadmap": study.roadmap.name}):
        for step in study.steps:
            arch, _, _ = study.resolve(step)
            (row,) = benchmark_steps([step], config, width_multiplier=arch.width_multiplier, progress=study.progress)
            rows.append(row)
            figures = {"bench_train_img_per_s": row["train_img_per_s"], "bench_eval_img_per_s": row["eval_img_per_s"],
                       "bench_peak_memory_mb": row["peak_memory_mb"], "bench_train_spread_pct": row["train_spread_pct"],
                       "bench_eval_spread_pct": row["eval_spread_pct"], "params": row["params"], "gmacs": row["gmacs"]}
            tags = {"order": step.order, "roadmap": study.roadmap.name, "preset": study.preset.name,
                    "config_hash": spec_hash(study.configuration(step)), "benchmark": config.describe()}
            tracker.log_benchmark(step.name, figures, params={"arch": to_dict(arch), "bench": to_dict(config)},
                                  tags=tags)
    click.echo(format_table(rows, config))
    _write_results(study)
    return 0
