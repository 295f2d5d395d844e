"""Train and evaluate one network under one recipe: epochs, evaluation, bf16, DDP, checkpoints and resume.

The engine returns typed results (`roadmap.training.result`) and knows nothing of MLflow; `on_epoch` is how
a caller sees progress. Besides last.pt and final.json it leaves in the checkpoint folder what a caller may
publish: the final weights (safetensors) and the per-image validation predictions of the last and the best
epoch (`roadmap.predictions`).
"""
from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from timm.data import Mixup
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler
from tqdm import tqdm

from ..errors import SpecError
from ..predictions import Predictions, write_predictions
from ..schema import FINAL_RESULT, LAST_CHECKPOINT, Artifact, Status
from ..spec import DEVICES, PRECISIONS, RecipeSpec, choice, whole_number
from . import distributed
from .batching import check_effective_batch
from .checkpoint import load_json, save_json
from .distributed import SINGLE_PROCESS, WorldInfo
from .optim import build_loss, build_optimizer, build_schedule
from .result import EpochRecord, TrainResult
from .resume import fingerprint, load_state, restore_rng, rng_state, save_state, seed_everything

__all__ = ["TrainOptions", "Evaluation", "train_and_evaluate", "train_one_epoch", "evaluate", "seed_everything",
           "WaitTimer"]


@dataclass(frozen=True)
class TrainOptions:
    """How to run a training (what to train is the recipe's business)."""

    # Holds last.pt (resume point, rewritten every epoch), final.json (the result of a finished run),
    # the final weights and the validation predictions.
    checkpoint_dir: Path
    # Seeds torch, numpy and `random` (plus the rank); the data order is the sampler's (seed, epoch).
    seed: int = 0
    device: str = "cpu"
    # "bf16": forward passes under torch.autocast in bfloat16 (no loss scaling needed); "fp32": none.
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    # Micro-batches per optimizer step; the recipe's batch_size = per-process batch x world x this.
    accumulation_steps: int = 1
    sync_batchnorm: bool = False
    # A tqdm bar per epoch on rank 0 (loss, lr, img/s).
    progress: bool = False
    world: WorldInfo = SINGLE_PROCESS

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        choice("device", self.device, DEVICES)
        choice("precision", self.precision, PRECISIONS)
        whole_number("accumulation_steps", self.accumulation_steps, 1)

    def torch_device(self) -> torch.device:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SpecError("device='cuda' is not valid here: no CUDA device is visible; choose device='cpu'")
        return torch.device(f"cuda:{self.world.local_rank}" if self.device == "cuda" else "cpu")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


@dataclass(frozen=True)
class Evaluation:
    """Accuracy over a whole validation loader (all processes), in %; predictions when asked for."""

    top1: float
    top5: float  # top-k with k = min(5, classes)
    img_per_s: float  # this process's images per second
    predictions: Predictions | None = None


@dataclass
class EpochTraining:
    """What one epoch's training loop saw, summed over processes; `diverged` says why it stopped early."""

    loss_sum: float = 0.0
    loss_count: int = 0
    images: int = 0
    lr: float = math.nan
    seconds: float = 0.0
    wait_seconds: float = 0.0
    last_loss: float = math.nan
    diverged: str = ""


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
    with _numerics(options.torch_device()):
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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

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

    ddp_model = distributed.wrap_model(raw_model, world, options.sync_batchnorm)
    train_model = torch.compile(ddp_model) if options.compile else ddp_model

    def result(status: Status, reason: str, top1: float, top5: float, train_loss: float) -> TrainResult:
        return TrainResult(status=status, reason=reason, history=tuple(history), resumed_from_epoch=start_epoch,
                           top1=top1, top5=top5, train_loss=train_loss, eval_img_per_s=eval_rate,
                           peak_memory_mb=peak_memory_mb(device), wall_time_s=earlier_wall + time.perf_counter()
                           - wall_start)

    if recipe.epochs == 0:
        evaluation = evaluate(train_model, val_loader, num_classes=num_classes, options=options, predictions=True)
        eval_rate = evaluation.img_per_s
        _publish_predictions(evaluation, folder, best=True, world=world)
        finished = result(Status.FINISHED, "", evaluation.top1, evaluation.top5, math.nan)
        return _finish(finished, raw_model, options)

    for epoch in range(start_epoch, recipe.epochs):
        epoch_stats = train_one_epoch(train_model, ddp_model, raw_model, criterion, mixup, train_loader, optimizer,
                                      scheduler, recipe, epoch, steps_per_epoch, options, device)
        if epoch_stats.diverged:
            # The weights are garbage now; the history keeps the good epochs, last.pt the last of them.
            diverged = result(Status.DIVERGED, epoch_stats.diverged, math.nan, math.nan, epoch_stats.last_loss)
            return _finish(diverged, None, options)
        evaluation = evaluate(train_model, val_loader, num_classes=num_classes, options=options, predictions=True)
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
        _publish_predictions(evaluation, folder, best=best_so_far, world=world)
        rng = distributed.all_gather_objects(rng_state(device, loaders))
        if world.is_main:
            save_state(folder / LAST_CHECKPOINT, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                       epoch=epoch + 1, history=history, rng=rng, eval_img_per_s=eval_rate, fingerprint=expected,
                       wall_time_s=earlier_wall + time.perf_counter() - wall_start)
        distributed.barrier()
        if on_epoch is not None and world.is_main:
            on_epoch(record)

    last = history[-1]
    return _finish(result(Status.FINISHED, "", last.val_top1, last.val_top5, last.train_loss), raw_model, options)


def train_one_epoch(train_model: nn.Module, ddp_model: nn.Module, raw_model: nn.Module, criterion: nn.Module,
                    mixup: Mixup | None, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler,
                    recipe: RecipeSpec, epoch: int, steps_per_epoch: int, options: TrainOptions,
                    device: torch.device) -> EpochTraining:
    """One pass over the training loader: forward, backward, and an optimizer step every accumulation group.

    `train_model` is what runs (maybe compiled), `ddp_model` the DDP wrapper (or the model itself) whose
    gradient sync we hold back, `raw_model` the plain module whose gradients we clip.
    """
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)  # data order = f(seed, epoch): the key to exact resume
    train_model.train()
    accumulation, world = options.accumulation_steps, options.world
    micro_steps = steps_per_epoch * accumulation
    stats = EpochTraining(lr=optimizer.param_groups[0]["lr"])
    show = options.progress and world.is_main
    bar = tqdm(total=micro_steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not show, leave=False)
    is_ddp = isinstance(ddp_model, nn.parallel.DistributedDataParallel)
    start = time.perf_counter()
    batches = WaitTimer(loader)
    for micro_step, (images, labels) in enumerate(batches):
        if micro_step == micro_steps:
            break  # a trailing partial accumulation group is skipped, as a partial batch would be
        images, labels = _to_device(images, labels, device, options.channels_last)
        if mixup is not None:
            if len(labels) % 2:  # only a loader's odd last batch; Mixup pairs images
                images, labels = images[:-1], labels[:-1]
            images, labels = mixup(images, labels)
        last_micro_step = (micro_step + 1) % accumulation == 0
        # Sync point: DDP all-reduces gradients in every backward unless told to wait for the group's last.
        with ddp_model.no_sync() if is_ddp and not last_micro_step else contextlib.nullcontext():
            with options.autocast(device):
                loss = criterion(train_model(images), labels)
            loss_value = _global_loss(loss, device)  # sync point: every rank sees a divergence at the same step
            if not math.isfinite(loss_value):
                stats.diverged = (f"non-finite loss {loss_value} at epoch {epoch + 1}, iteration {micro_step + 1} "
                                  f"of {micro_steps}")
                stats.last_loss = loss_value
                bar.close()
                return stats
            (loss / accumulation).backward()
        stats.loss_sum, stats.loss_count = stats.loss_sum + loss_value, stats.loss_count + 1
        stats.images += len(labels)
        if last_micro_step:
            if recipe.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(raw_model.parameters(), recipe.clip_grad_norm)
            stats.lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step_update(num_updates=epoch * steps_per_epoch + (micro_step + 1) // accumulation)
        bar.update()
        if show and micro_step % 10 == 0:
            rate = stats.images * world.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{stats.lr:.2e}", img_s=f"{rate:.0f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync point: CUDA kernels run asynchronously
    stats.seconds, stats.wait_seconds = time.perf_counter() - start, batches.seconds
    stats.loss_sum, stats.loss_count, stats.images = distributed.all_reduce_sum(
        [stats.loss_sum, stats.loss_count, stats.images], device)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, num_classes: int, options: TrainOptions,
             predictions: bool = False) -> Evaluation:
    """Top-1 and top-k (k = min(5, classes)) accuracy in % over the whole loader, summed over processes.

    With `predictions`, every image's top-k classes too, gathered from all processes and ordered by the
    image's index in the split (the loader's sampler must name its indices: ShardSampler or sequential).
    """
    device, top_k = options.torch_device(), min(5, num_classes)
    model.eval()
    hits1 = hitsk = images = 0
    ranked: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    start = time.perf_counter()
    for batch_images, labels in loader:
        batch_images, labels = _to_device(batch_images, labels, device, options.channels_last)
        with options.autocast(device):
            logits = model(batch_images)
        top = logits.float().topk(top_k, dim=1).indices
        hits1 += int((top[:, 0] == labels).sum())
        hitsk += int((top == labels[:, None]).any(dim=1).sum())
        images += len(labels)
        if predictions:
            ranked.append(top.cpu())
            targets.append(labels.cpu())
    seconds = time.perf_counter() - start
    hits1, hitsk, total = distributed.all_reduce_sum([hits1, hitsk, images], device)
    if total == 0:
        raise SpecError("the validation loader is empty; give it at least one image")
    kept = _gather_predictions(loader, ranked, targets, top_k) if predictions else None
    return Evaluation(top1=100 * hits1 / total, top5=100 * hitsk / total, img_per_s=images / max(seconds, 1e-9),
                      predictions=kept)


def _gather_predictions(loader: DataLoader, ranked: list[torch.Tensor], targets: list[torch.Tensor],
                        top_k: int) -> Predictions:
    sampler = loader.sampler
    if hasattr(sampler, "indices"):
        indices = list(sampler.indices)
    elif isinstance(sampler, SequentialSampler):
        indices = list(range(len(sampler)))
    else:
        raise SpecError(f"the validation sampler {type(sampler).__name__} does not name its images' indices; "
                        "use ShardSampler or a sequential sampler")
    local = (np.asarray(indices, dtype=np.int64),
             torch.cat(targets).numpy() if targets else np.zeros(0, np.int64),
             torch.cat(ranked).numpy() if ranked else np.zeros((0, top_k), np.int64))
    parts = distributed.all_gather_objects(local)  # sync point
    index, label, top = (np.concatenate([part[field] for part in parts]) for field in range(3))
    order = np.argsort(index, kind="stable")
    return Predictions(index=index[order], label=label[order], top_k=top[order])


def _publish_predictions(evaluation: Evaluation, folder: Path, *, best: bool, world: WorldInfo) -> None:
    """The epoch's predictions as predictions.csv, and as predictions_best.csv when it is the best so far."""
    if not world.is_main or evaluation.predictions is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    names = [Artifact.PREDICTIONS] + ([Artifact.BEST_PREDICTIONS] if best else [])
    for name in names:
        temporary = folder / f".{name}.tmp"
        write_predictions(temporary, evaluation.predictions)
        os.replace(temporary, folder / name)


def _finish(result: TrainResult, model: nn.Module | None, options: TrainOptions) -> TrainResult:
    """final.json, and the final weights of a finished run (a plain state dict, contiguous, in safetensors)."""
    if options.world.is_main:
        if model is not None:
            tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
            save_file(tensors, str(options.checkpoint_dir / Artifact.WEIGHTS))
        save_json(result.to_json(), options.checkpoint_dir / FINAL_RESULT)
    distributed.barrier()
    return result


class WaitTimer:
    """An iterable's items, timing how long each `next` took: what a training loop waits for its data."""

    def __init__(self, iterable: Iterable):
        self.iterable, self.seconds = iterable, 0.0

    def __iter__(self) -> Iterator:
        iterator = iter(self.iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - start
            yield item


@contextlib.contextmanager
def _numerics(device: torch.device) -> Iterator[None]:
    """Deterministic kernels where they are free (the CPU; on CUDA they cost speed). On CUDA, fp32 matmuls and
    convolutions on TF32 tensor cores, as PyTorch 1.8 ran the paper's fp32 trainings. The old settings after."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous_tf32


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _global_loss(loss: torch.Tensor, device: torch.device) -> float:
    """This micro-step's loss, averaged over processes."""
    if distributed.is_distributed():
        return distributed.all_reduce_sum([loss.item()], device)[0] / torch.distributed.get_world_size()
    return loss.item()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: on CUDA, torch's allocated peak since the run started; on the CPU, the whole
    process's peak resident set (Linux reports KiB) since the process began, model and data included."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
