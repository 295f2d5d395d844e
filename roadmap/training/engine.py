"""Train and evaluate one network under one recipe: epochs, evaluation, bf16, DDP, checkpoints and resume.

The engine returns typed results (`roadmap.training.result`) and knows nothing of MLflow; `on_epoch` is how
a caller sees progress. Besides last.pt and final.json it leaves in the checkpoint folder what a caller may
publish: the final weights (safetensors) and the per-image validation predictions of the last and the best
epoch (`roadmap.predictions`).

On CUDA it runs as timm's train.py does, and says where it differs: TF32 and cudnn.benchmark
(`numerics`), the model compiled before DDP wraps it from an empty dynamo cache (`compiled`), no host sync
per micro-step (`epoch`), evaluation reading the device once (`evaluation`); each run's own peak memory
(`memory`) and its share of time waiting for data.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from ..errors import SpecError
from ..schema import FINAL_RESULT, LAST_CHECKPOINT, Artifact, Status
from ..spec import RecipeSpec
from . import distributed
from .batching import check_effective_batch
from .checkpoint import load_json, save_json
from .compiled import compile_for_run, recompiles_so_far
from .epoch import EpochTraining, WaitTimer, data_wait_warning, loader_workers, say, train_one_epoch
from .evaluation import Evaluation, evaluate, publish_predictions
from .memory import MemoryWatch
from .numerics import training_numerics
from .optim import build_loss, build_optimizer, build_schedule
from .options import TrainOptions
from .result import EpochRecord, TrainResult
from .resume import fingerprint, load_state, restore_rng, rng_state, save_state, seed_everything

__all__ = ["TrainOptions", "Evaluation", "EpochTraining", "train_and_evaluate", "train_one_epoch", "evaluate",
           "seed_everything", "WaitTimer"]


def train_and_evaluate(
    model: nn.Module,
    recipe: RecipeSpec,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    num_classes: int,
    options: TrainOptions,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train `model` in place for recipe.epochs, evaluating after every epoch; resume from last.pt if present.

    A finished or diverged run writes final.json, and a later call with the same checkpoint_dir returns that
    result without training. `on_epoch` (rank 0 only) gets each new epoch's record once its checkpoint is on
    disk.
    """
    if (options.checkpoint_dir / FINAL_RESULT).exists():
        return TrainResult.from_json(load_json(options.checkpoint_dir / FINAL_RESULT))
    with training_numerics(options.torch_device()):
        return _train(model, recipe, train_loader, val_loader, num_classes, options, on_epoch)


def _train(model: nn.Module, recipe: RecipeSpec, train_loader: DataLoader, val_loader: DataLoader,
           num_classes: int, options: TrainOptions, on_epoch: Callable[[EpochRecord], None] | None) -> TrainResult:
    wall_start = time.perf_counter()
    folder, world = options.checkpoint_dir, options.world
    check_effective_batch(recipe, train_loader.batch_size, world.world_size, options.accumulation_steps)
    steps_per_epoch = len(train_loader) // options.accumulation_steps
    if recipe.epochs > 0 and steps_per_epoch == 0:
        raise SpecError(f"train loader has {len(train_loader)} batches, fewer than accumulation_steps="
                        f"{options.accumulation_steps}; use more images or fewer accumulation steps")
    device = options.torch_device()
    seed_everything(options.seed + world.rank)
    memory = MemoryWatch(device)  # this run's peaks, not the process's

    raw_model = model.to(device, memory_format=torch.channels_last if options.channels_last else torch.preserve_format)
    optimizer = build_optimizer(raw_model, recipe)
    scheduler = build_schedule(optimizer, recipe, steps_per_epoch)
    mixup, criterion = build_loss(recipe, num_classes)
    expected = fingerprint(recipe, num_classes)
    loaders = (train_loader, val_loader)

    start_epoch, history, eval_rate, earlier_wall = 0, [], math.nan, 0.0
    if (folder / LAST_CHECKPOINT).exists():
        state = load_state(folder / LAST_CHECKPOINT, expected)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        eval_rate, earlier_wall = state["eval_img_per_s"], state["wall_time_s"]
        restore_rng(state["rng"], seed=options.seed, world=world, device=device, loaders=loaders, epoch=start_epoch)

    # Compiled before DDP wraps it (timm's train.py compiles the DDP wrapper): evaluation then runs the same
    # compiled module outside DDP, with no DDP forward and no graph of its own per bucket. Training still gets
    # DDP's overlap of all-reduce with backward: dynamo sees the module run inside DDP's forward and splits
    # the training graph at DDP's buckets (its DDPOptimizer), as it does for a compiled wrapper.
    run_model = compile_for_run(raw_model) if options.compile else raw_model  # what runs, compiled or not
    ddp_model = distributed.wrap_model(run_model, world, options.sync_batchnorm)
    warned = False

    def run_evaluation() -> Evaluation:
        distributed.broadcast_buffers(raw_model)  # what DDP's forward would do first
        return evaluate(run_model, val_loader, num_classes=num_classes, options=options, predictions=True,
                        pad_last_batch=options.compile)

    def result(status: Status, reason: str, top1: float, top5: float, train_loss: float) -> TrainResult:
        peak = memory.peak()
        return TrainResult(status=status, reason=reason, history=tuple(history), resumed_from_epoch=start_epoch,
                           top1=top1, top5=top5, train_loss=train_loss, eval_img_per_s=eval_rate,
                           peak_memory_mb=peak.device_peak_mib(), wall_time_s=earlier_wall + time.perf_counter()
                           - wall_start, peak_memory_allocated_mib=peak.allocated_mib,
                           peak_memory_reserved_mib=peak.reserved_mib, peak_process_rss_mib=peak.process_rss_mib,
                           recompiles=recompiles_so_far() if options.compile else None)

    if recipe.epochs == 0:
        evaluation = run_evaluation()
        eval_rate = evaluation.img_per_s
        publish_predictions(evaluation, folder, best=True, world=world)
        finished = result(Status.FINISHED, "", evaluation.top1, evaluation.top5, math.nan)
        return _finish(finished, raw_model, options)

    for epoch in range(start_epoch, recipe.epochs):
        epoch_stats = train_one_epoch(ddp_model, ddp_model, raw_model, criterion, mixup, train_loader, optimizer,
                                      scheduler, recipe, epoch, steps_per_epoch, options, device)
        if epoch_stats.diverged:
            # The weights are garbage now; the history keeps the good epochs, last.pt the last of them.
            diverged = result(Status.DIVERGED, epoch_stats.diverged, math.nan, math.nan, epoch_stats.last_loss)
            return _finish(diverged, None, options)
        evaluation = run_evaluation()
        eval_rate = evaluation.img_per_s
        record = EpochRecord(
            epoch=epoch + 1, train_loss=epoch_stats.loss_sum / epoch_stats.loss_count, lr=epoch_stats.lr,
            val_top1=evaluation.top1, val_top5=evaluation.top5,
            train_img_per_s=epoch_stats.images / epoch_stats.seconds, train_s=epoch_stats.seconds,
            data_wait_s=epoch_stats.wait_seconds,
        )
        best_so_far = all(record.val_top1 > earlier.val_top1 for earlier in history)
        history.append(record)
        # Predictions first, then the checkpoint that counts this epoch: a kill between them retrains it.
        publish_predictions(evaluation, folder, best=best_so_far, world=world)
        rng = distributed.all_gather_objects(rng_state(device, loaders))
        if world.is_main:
            save_state(folder / LAST_CHECKPOINT, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                       epoch=epoch + 1, history=history, rng=rng, eval_img_per_s=eval_rate, fingerprint=expected,
                       wall_time_s=earlier_wall + time.perf_counter() - wall_start)
        distributed.barrier()
        warning = data_wait_warning(record.data_wait_s, record.train_s, epoch=record.epoch,
                                    workers=loader_workers(train_loader))
        if warning and not warned and world.is_main:
            say(warning)  # once per run: the first epoch that waited too long
            warned = True
        if on_epoch is not None and world.is_main:
            on_epoch(record)

    last = history[-1]
    return _finish(result(Status.FINISHED, "", last.val_top1, last.val_top5, last.train_loss), raw_model, options)


def _finish(result: TrainResult, model: nn.Module | None, options: TrainOptions) -> TrainResult:
    """final.json, and the final weights of a finished run (a plain state dict, contiguous, in safetensors)."""
    if options.world.is_main:
        if model is not None:
            tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
            save_file(tensors, str(options.checkpoint_dir / Artifact.WEIGHTS))
        save_json(result.to_json(), options.checkpoint_dir / FINAL_RESULT)
    distributed.barrier()
    return result
