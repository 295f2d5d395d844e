"""One unit of work: train, evaluate and track one (variant, seed) of a plan.

The same function runs in the study's own process, in a local job and in a SLURM job; a job that is
requeued runs it again and it resumes from the last epoch checkpoint into the same MLflow run.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from ..data import Datasets, build_datasets, build_loaders
from ..models.complexity import count_complexity
from ..models.network import build_model
from ..schema import FINAL_RESULT, Artifact, Metric, Status, Tag, checkpoint_folder
from ..spec import DataSpec, RecipeSpec, spec_hash
from ..training import distributed
from ..training.checkpoint import save_json
from ..training.engine import TrainOptions, train_and_evaluate
from ..training.result import TrainResult
from ..variants import HASH_VERSION, Ablation, Variant
from .claim import Claim
from .settings import RunSettings, Study


@dataclass(frozen=True)
class UnitOfWork:
    """One (variant, seed) of a study: everything a process needs to train, evaluate and track it."""

    variant: Variant
    seed: int
    roadmap: str
    ablation: Ablation
    preset: str
    run: RunSettings
    # This unit's checkpoint folder (last.pt, final.json, weights, predictions).
    folder: Path
    tracking_uri: str | None
    # How long MLflow calls wait for a tracking server that does not answer (seconds).
    tracking_patience_s: float
    experiment: str
    # The parent run the step run nests under (None: no parent).
    study_run_id: str | None
    # Train again even if a finished run has this configuration.
    force: bool = False
    # How the unit's lines start, e.g. "[3/16]".
    label: str = ""

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def config_hash(self) -> str:
        return self.variant.config_hash

    @property
    def key(self) -> str:
        """What names the unit in a launch: its configuration and seed (a run is nothing else)."""
        return f"{self.config_hash}/seed{self.seed}"

    @property
    def title(self) -> str:
        return f"{self.label} {self.name} seed {self.seed}".strip()

    def config(self) -> dict:
        """What config.json, the run's params and its hash hold, with the names that say what it is."""
        return {"roadmap": self.roadmap, "variant": self.name, "step": self.variant.step, "preset": self.preset,
                **self.variant.configuration()}


@dataclass(frozen=True)
class UnitOutcome:
    """What became of a unit: finished or diverged (with the engine's result), skipped, claimed or failed."""

    key: str
    name: str
    seed: int
    status: Status
    result: TrainResult | None = None
    run_id: str | None = None
    message: str = ""


class DatasetCache:
    """Builds each (data, transforms) pair once per process: variants share data unless their recipe differs."""

    def __init__(self) -> None:
        self._built: dict[str, Datasets] = {}

    def get(self, data: DataSpec, recipe: RecipeSpec, run: RunSettings) -> Datasets:
        key = spec_hash(data, recipe)
        if key not in self._built:
            self._built[key] = build_datasets(data, recipe, cache_dir=run.data_cache, download=run.download)
        return self._built[key]


def plan_units(study: Study, study_run_id: str | None) -> list[UnitOfWork]:
    """Every (variant, seed) the study trains, in plan order, seeds inner; a configuration that two variants
    share (leave-one-out's identical ones are not in it) is one unit."""
    pairs, seen = [], set()
    for variant in study.plan.trained():
        for seed in study.plan.seeds:
            if (variant.config_hash, seed) not in seen:
                seen.add((variant.config_hash, seed))
                pairs.append((variant, seed))
    return [
        UnitOfWork(
            variant=variant, seed=seed, roadmap=study.plan.roadmap.name, ablation=study.plan.ablation,
            preset=study.plan.preset, run=study.run,
            folder=checkpoint_folder(study.checkpoint_dir, study.experiment, variant.config_hash, seed),
            tracking_uri=study.tracking_uri, tracking_patience_s=study.tracking_patience_s,
            experiment=study.experiment, study_run_id=study_run_id,
            force=study.force, label=f"[{index}/{len(pairs)}]",
        )
        for index, (variant, seed) in enumerate(pairs, start=1)
    ]


def cpu_threads(world_size: int, workers: int) -> int:
    """Intra-op threads per training process that leave a core to each data-loader worker.

    More runnable threads than cores makes every OpenMP barrier wait for a descheduled thread: on
    2 cores, 2 torch threads beside 1 busy worker ran small convolutions several times slower than 1.
    """
    return max(1, (os.cpu_count() or 1) // world_size - workers)


def run_unit(unit: UnitOfWork, cache: DatasetCache | None = None) -> UnitOutcome:
    """Train, evaluate and track one (variant, seed); every rank of a distributed job calls it.

    Rank 0 alone takes the claim and then asks MLflow, in that order: a run that another process finished
    while this one waited for the claim is seen finished, never opened twice. Every rank follows its answer.
    """
    world = distributed.init_distributed(unit.run.device)
    claim = Claim(unit.folder)
    tracker, finished = None, None
    if world.is_main:
        decision = "train" if claim.acquire() else Status.CLAIMED
        if decision == "train":
            tracker = _tracker(unit)
            finished = tracker.find_finished(unit.seed, unit.config_hash)
            if finished and not unit.force:
                claim.release()
                decision = Status.SKIPPED
    else:
        decision = "train"
    decision = distributed.all_gather_objects(decision)[0]
    if decision == Status.SKIPPED:
        return _say(world, UnitOutcome(unit.key, unit.name, unit.seed, Status.SKIPPED, run_id=finished, message=(
            f"{unit.title}: finished run {finished} has this configuration; skipped (--force re-runs it)")))
    if decision == Status.CLAIMED:
        return _say(world, UnitOutcome(unit.key, unit.name, unit.seed, Status.CLAIMED, message=(
            f"{unit.title}: being trained by {claim.holder()}; skipped here")))
    try:
        return _train_unit(unit, cache or DatasetCache(), tracker, world)
    finally:
        claim.release()


def _tracker(unit: UnitOfWork):
    from ..tracking import Tracker

    tracker = Tracker(unit.tracking_uri, unit.experiment, patience_s=unit.tracking_patience_s)
    if unit.study_run_id:
        tracker.attach_study(unit.study_run_id)
    return tracker


def _train_unit(unit: UnitOfWork, cache: DatasetCache, tracker, world: distributed.WorldInfo) -> UnitOutcome:
    variant, folder = unit.variant, unit.folder
    config = unit.config()
    if world.is_main:
        if unit.force and (folder / FINAL_RESULT).exists():
            shutil.rmtree(folder)
        save_json(config, folder / Artifact.CONFIG)  # beside the weights, for roadmap.load_trained
    distributed.barrier()
    datasets = cache.get(variant.data, variant.recipe, unit.run)
    torch.manual_seed(unit.seed)
    model = build_model(variant.arch, num_classes=datasets.num_classes)
    complexity = count_complexity(model, variant.data.image_size)
    options = TrainOptions(
        checkpoint_dir=folder, seed=unit.seed, device=unit.run.device, precision=variant.precision,
        channels_last=unit.run.channels_last, compile=unit.run.compile,
        accumulation_steps=variant.accumulation_steps, sync_batchnorm=unit.run.sync_batchnorm,
        progress=unit.run.progress, world=world,
    )
    # On a GPU, evaluation runs at twice the training micro-batch (no backward, no activations kept), as timm's
    # validate does; on the CPU at the micro-batch, so that CPU results stay what they were.
    eval_batch = 2 * variant.micro_batch if unit.run.device == "cuda" else None
    train_loader, val_loader = build_loaders(datasets, variant.micro_batch, workers=unit.run.loader_workers(),
                                             seed=unit.seed, rank=world.rank, world_size=world.world_size,
                                             device=options.torch_device(), eval_batch_size=eval_batch)
    recipe = variant.recipe
    if world.is_main:
        click.echo(f"{unit.title}: {complexity.params / 1e6:.2f} M params, {complexity.gmacs:.3f} GMACs at "
                   f"{variant.data.image_size} px, {recipe.name} recipe, {recipe.epochs} epochs, batch "
                   f"{recipe.batch_size} ({variant.micro_batch} x {variant.accumulation_steps} accumulation x "
                   f"{variant.processes} processes), BatchNorm batch {recipe.bn_batch}, peak lr {recipe.lr():.2e}")
    if tracker is None:  # ranks > 0
        result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=datasets.num_classes,
                                    options=options)
        return UnitOutcome(unit.key, unit.name, unit.seed, result.status, result=result)
    params = {key: value for key, value in config.items() if key not in ("variant", "step")}
    with tracker.step_run(unit.name, unit.seed, unit.config_hash, params=params, tags=_tags(unit, datasets, world),
                          config=config) as run:
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
        message = (f"{unit.title}: top-1 {result.top1:.2f} % (best {result.top1_best:.2f} % at epoch "
                   f"{result.top1_best_epoch}), top-5 {result.top5:.2f} % on {datasets.description} val; {where}; "
                   f"{result.wall_time_s:.1f} s; train {result.train_img_per_s:.0f} img/s on {unit.run.device}")
    else:
        message = f"{unit.title}: DIVERGED: {result.reason}"
    return _say(world, UnitOutcome(unit.key, unit.name, unit.seed, result.status, result=result, run_id=run.run_id,
                                   message=message))


def _tags(unit: UnitOfWork, datasets: Datasets, world: distributed.WorldInfo) -> dict[str, object]:
    from ..tracking import environment_tags

    variant = unit.variant
    device = torch.cuda.get_device_name() if unit.run.device == "cuda" else "cpu"
    return {
        Tag.ORDER: variant.order, Tag.GROUP: variant.group, Tag.ADOPTED: variant.adopted,
        Tag.BASELINE: variant.baseline or "", Tag.ABLATION: unit.ablation, Tag.HASH_VERSION: HASH_VERSION,
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
