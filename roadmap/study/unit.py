"""One unit of work: train, evaluate and track one (step, seed) from its resolved configuration.

The same function runs in the study's own process, in a local job and in a SLURM job; a job that is
requeued runs it again and it resumes from the last epoch checkpoint into the same MLflow run.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from ..data import Datasets, build_datasets, build_loaders
from ..models.complexity import count_complexity
from ..models.network import build_model
from ..schema import FINAL_RESULT, Artifact, Metric, Status, Tag
from ..spec import DataSpec, RecipeSpec, spec_hash
from ..training import distributed
from ..training.checkpoint import save_json
from ..training.engine import TrainOptions, train_and_evaluate
from ..training.result import TrainResult
from .claim import Claim
from .options import ResolvedStep, RunSettings, StudyOptions

# Outcomes of a unit besides the engine's: already finished in MLflow, or being trained by another process.
SKIPPED, CLAIMED = "skipped", "claimed"


@dataclass(frozen=True)
class UnitOfWork:
    """One (step, seed) of a study, resolved: everything a process needs to train, evaluate and track it."""

    roadmap: str
    resolved: ResolvedStep
    seed: int
    # The resolved configuration (what config.json, the params and the hash hold) and its hash.
    config: dict[str, Any]
    config_hash: str
    run: RunSettings
    # This unit's checkpoint folder (last.pt, final.json, weights, predictions).
    folder: Path
    tracking_uri: str | None
    experiment: str
    # The parent run the step run nests under (None: no parent).
    study_run_id: str | None
    preset: str
    # Train again even if a finished run has this configuration.
    force: bool = False
    # How the unit's lines start, e.g. "[3/16]".
    label: str = ""

    @property
    def step(self) -> str:
        return self.resolved.step.name

    @property
    def key(self) -> str:
        """What names the unit in a launch: step, seed and configuration."""
        return f"{self.step}/seed{self.seed}/{self.config_hash}"


@dataclass(frozen=True)
class UnitOutcome:
    """What became of a unit: finished or diverged (with the engine's result), skipped, or claimed."""

    key: str
    step: str
    seed: int
    status: str
    result: TrainResult | None = None
    run_id: str | None = None
    message: str = ""


class DatasetCache:
    """Builds each (data, transforms) pair once per process: steps share data unless their recipe differs."""

    def __init__(self) -> None:
        self._built: dict[str, Datasets] = {}

    def get(self, data: DataSpec, recipe: RecipeSpec) -> Datasets:
        key = spec_hash(data, recipe)
        if key not in self._built:
            self._built[key] = build_datasets(data, recipe)
        return self._built[key]


def plan_units(study: StudyOptions, study_run_id: str | None) -> list[UnitOfWork]:
    """Every (step, seed) of the study, in roadmap order, seeds inner."""
    pairs = [(step, seed) for step in study.steps for seed in study.seeds]
    return [
        UnitOfWork(
            roadmap=study.roadmap.name, resolved=study.resolve(step), seed=seed,
            config=study.configuration(step), config_hash=study.config_hash(step), run=study.run,
            folder=study.checkpoint_folder(step, seed), tracking_uri=study.tracking_uri,
            experiment=study.experiment, study_run_id=study_run_id, preset=study.preset.name, force=study.force,
            label=f"[{index}/{len(pairs)}]",
        )
        for index, (step, seed) in enumerate(pairs, start=1)
    ]


def cpu_threads(world_size: int, workers: int) -> int:
    """Intra-op threads per training process that leave a core to each data-loader worker.

    More runnable threads than cores makes every OpenMP barrier wait for a descheduled thread: on
    2 cores, 2 torch threads beside 1 busy worker ran small convolutions several times slower than 1.
    """
    return max(1, (os.cpu_count() or 1) // world_size - workers)


def run_unit(unit: UnitOfWork, cache: DatasetCache | None = None) -> UnitOutcome:
    """Train, evaluate and track one (step, seed); every rank of a distributed job calls it.

    Rank 0 alone asks MLflow and takes the claim; every rank follows its answer.
    """
    world = distributed.init_distributed(unit.run.device)
    tracker = _tracker(unit) if world.is_main else None
    finished = tracker.find_finished(unit.step, unit.seed, unit.config_hash) if tracker else None
    claim = Claim(unit.folder)
    if finished and not unit.force:
        decision = SKIPPED
    else:
        decision = "train" if not world.is_main or claim.acquire() else CLAIMED
    decision = distributed.all_gather_objects(decision)[0]
    if decision == SKIPPED:
        return _say(world, UnitOutcome(unit.key, unit.step, unit.seed, SKIPPED, run_id=finished, message=(
            f"{unit.label} {unit.step} seed {unit.seed}: finished run {finished} has this configuration; skipped "
            "(--force re-runs it)")))
    if decision == CLAIMED:
        return _say(world, UnitOutcome(unit.key, unit.step, unit.seed, CLAIMED, message=(
            f"{unit.label} {unit.step} seed {unit.seed}: being trained by {claim.holder()}; skipped here")))
    try:
        return _train_unit(unit, cache or DatasetCache(), tracker, world)
    finally:
        claim.release()


def _tracker(unit: UnitOfWork):
    from ..tracking import Tracker

    tracker = Tracker(unit.tracking_uri, unit.experiment)
    if unit.study_run_id:
        tracker.attach_study(unit.study_run_id)
    return tracker


def _train_unit(unit: UnitOfWork, cache: DatasetCache, tracker, world: distributed.WorldInfo) -> UnitOutcome:
    resolved, folder = unit.resolved, unit.folder
    if world.is_main:
        if unit.force and (folder / FINAL_RESULT).exists():
            shutil.rmtree(folder)
        save_json(unit.config, folder / Artifact.CONFIG)  # beside the weights, for roadmap.load_trained
    distributed.barrier()
    datasets = cache.get(resolved.data, resolved.recipe)
    torch.manual_seed(unit.seed)
    model = build_model(resolved.arch, num_classes=datasets.num_classes)
    complexity = count_complexity(model, resolved.data.image_size)
    options = TrainOptions(
        checkpoint_dir=folder, seed=unit.seed, device=unit.run.device, precision=unit.run.precision,
        channels_last=unit.run.channels_last, compile=unit.run.compile,
        accumulation_steps=resolved.split.accumulation_steps, sync_batchnorm=unit.run.sync_batchnorm,
        progress=unit.run.progress, world=world,
    )
    train_loader, val_loader = build_loaders(datasets, resolved.split.micro_batch, workers=resolved.data.workers,
                                             seed=unit.seed, rank=world.rank, world_size=world.world_size,
                                             device=options.torch_device())
    recipe = resolved.recipe
    if world.is_main:
        click.echo(f"{unit.label} {unit.step} seed {unit.seed}: {complexity.params / 1e6:.2f} M params, "
                   f"{complexity.gmacs:.3f} GMACs at {resolved.data.image_size} px, {recipe.name} recipe, "
                   f"{recipe.epochs} epochs, {resolved.split.describe()}, BatchNorm batch {recipe.bn_batch}, "
                   f"peak lr {recipe.lr():.2e}")
    if tracker is None:  # ranks > 0
        result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=datasets.num_classes,
                                    options=options)
        return UnitOutcome(unit.key, unit.step, unit.seed, result.status, result=result)
    params = {key: value for key, value in unit.config.items() if key != "step"}
    with tracker.step_run(unit.step, unit.seed, unit.config_hash, params=params, tags=_tags(unit, datasets, world),
                          config=unit.config) as run:
        if run.resumed:
            click.echo(f"{unit.label} resuming MLflow run {run.run_id}")
        result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=datasets.num_classes,
                                    options=options, on_epoch=lambda record: run.log_epoch(record.metrics(),
                                                                                           record.epoch))
        _backfill_epochs(tracker, run, result)
        run.log_final({**result.final_metrics(), Metric.PARAMS: complexity.params, Metric.GMACS: complexity.gmacs},
                      result.status, result.reason)
        _log_files(run, folder, datasets, result)
    where = f"resumed from epoch {result.resumed_from_epoch}" if result.resumed_from_epoch else "trained"
    if result.status == Status.FINISHED:
        message = (f"{unit.label} {unit.step} seed {unit.seed}: top-1 {result.top1:.2f} % (best {result.top1_best:.2f} "
                   f"% at epoch {result.top1_best_epoch}), top-5 {result.top5:.2f} % on {datasets.description} val; "
                   f"{where}; {result.wall_time_s:.1f} s; train {result.train_img_per_s:.0f} img/s on "
                   f"{unit.run.device}")
    else:
        message = f"{unit.label} {unit.step} seed {unit.seed}: DIVERGED: {result.reason}"
    return _say(world, UnitOutcome(unit.key, unit.step, unit.seed, result.status, result=result, run_id=run.run_id,
                                   message=message))


def _tags(unit: UnitOfWork, datasets: Datasets, world: distributed.WorldInfo) -> dict[str, Any]:
    from ..tracking import environment_tags

    step = unit.resolved.step
    device = torch.cuda.get_device_name() if unit.run.device == "cuda" else "cpu"
    return {
        Tag.ORDER: step.order, Tag.GROUP: step.group, Tag.ADOPTED: step.adopted, Tag.PARENT_STEP: step.parent or "",
        Tag.ROADMAP: unit.roadmap, Tag.DATASET: datasets.description, Tag.DATA_KIND: datasets.kind,
        Tag.PRESET: unit.preset, Tag.DEVICE: f"{device} x{world.world_size}", **environment_tags(),
    }


def _backfill_epochs(tracker, run, result: TrainResult) -> None:
    """Log the epochs a kill left out of MLflow: checkpointed, but killed before their metrics were sent."""
    if not run.resumed:
        return
    from ..tracking import load_metric_history

    logged = {epoch for epoch, _ in load_metric_history(tracker.tracking_uri, run.run_id, Metric.VAL_TOP1)}
    for record in result.history:
        if record.epoch not in logged:
            run.log_epoch(record.metrics(), record.epoch)


def _log_files(run, folder: Path, datasets: Datasets, result: TrainResult) -> None:
    """The data it saw, and what it leaves: its weights (a finished run) and its validation predictions."""
    run.log_datasets(datasets.records)
    for name in (Artifact.WEIGHTS, Artifact.PREDICTIONS, Artifact.BEST_PREDICTIONS):
        if (folder / name).exists() and (name != Artifact.WEIGHTS or result.status == Status.FINISHED):
            run.log_artifact(folder / name)


def _say(world: distributed.WorldInfo, outcome: UnitOutcome) -> UnitOutcome:
    if world.is_main and outcome.message:
        click.echo(outcome.message, err=outcome.status == Status.DIVERGED)
    return outcome
