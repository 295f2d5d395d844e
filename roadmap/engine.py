"""Train and evaluate one network under one recipe: optimizer, schedule, mixup, loops, bf16, DDP, checkpoints.

The engine returns plain dicts and knows nothing of MLflow; `on_epoch` is how a caller sees progress.
"""
from __future__ import annotations

import contextlib
import math
import random
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from timm.utils import accuracy
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import distributed
from .checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from .distributed import SINGLE_PROCESS, WorldInfo
from .spec import RecipeSpec, SpecError, spec_hash

PRECISIONS = ("fp32", "bf16")
DEVICES = distributed.DEVICES
LAST_CHECKPOINT = "last.pt"
FINAL_RESULT = "final.json"
EPOCH_KEYS = ("epoch", "train_loss", "lr", "val_top1", "val_top5", "train_img_per_s", "train_s", "data_wait_s")


@dataclass(frozen=True)
class TrainOptions:
    """How to run a training (what to train is the recipe's business)."""

    # Holds last.pt (resume point, rewritten every epoch) and final.json (the result of a finished run).
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
        if self.device not in DEVICES:
            raise SpecError(f"device={self.device!r} is not valid; choose one of: {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"precision={self.precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
        if not isinstance(self.accumulation_steps, int) or self.accumulation_steps < 1:
            raise SpecError(f"accumulation_steps={self.accumulation_steps!r} is not valid; a whole number >= 1")

    def torch_device(self) -> torch.device:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SpecError("device='cuda' is not valid here: no CUDA device is visible; choose device='cpu'")
        return torch.device(f"cuda:{self.world.local_rank}" if self.device == "cuda" else "cpu")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def per_process_batch(loader: DataLoader) -> int:
    batch = loader.batch_size if loader.batch_size is not None else getattr(loader.batch_sampler, "batch_size", None)
    if not isinstance(batch, int):
        raise SpecError(f"train loader batch size {batch!r} is not valid; give the DataLoader a whole batch_size")
    return batch


def check_effective_batch(recipe: RecipeSpec, train_loader: DataLoader, options: TrainOptions) -> int:
    """The per-process batch, after checking that it adds up to the recipe's effective batch."""
    batch = per_process_batch(train_loader)
    world, steps = options.world.world_size, options.accumulation_steps
    if batch * world * steps != recipe.batch_size:
        raise SpecError(
            f"effective batch {batch} per process x {world} processes x {steps} accumulation steps = "
            f"{batch * world * steps} does not match recipe batch_size={recipe.batch_size}"
        )
    if mixup_enabled(recipe) and batch % 2:
        raise SpecError(f"per-process batch {batch} is not valid with mixup/cutmix (pairs images); use an even batch")
    return batch


def mixup_enabled(recipe: RecipeSpec) -> bool:
    return recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0


def build_optimizer(model: nn.Module, recipe: RecipeSpec) -> torch.optim.Optimizer:
    """SGD with classical momentum or AdamW at the recipe's peak lr; norms and biases decay-free when asked.

    Build it after the model is on its device: it uses torch's fused kernels (one per step instead of a
    few per parameter; AdamW steps 6x faster on the CPU), which exist for CPU and CUDA parameters.
    """
    common = dict(lr=recipe.lr(), weight_decay=recipe.weight_decay, filter_bias_and_bn=recipe.no_decay_norm_and_bias,
                  fused=True)
    if recipe.optimizer == "sgd":
        # timm's "sgd" is Nesterov; torchvision's ResNet reference uses classical momentum.
        return create_optimizer_v2(model, opt="momentum", momentum=recipe.momentum, **common)
    return create_optimizer_v2(model, opt="adamw", betas=recipe.betas, **common)


def build_schedule(optimizer: torch.optim.Optimizer, recipe: RecipeSpec, steps_per_epoch: int) -> Scheduler:
    """Per-iteration lr: linear warm-up from 0, then step decay (classic) or cosine to min_lr (modern)."""
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = min(round(recipe.warmup_epochs * steps_per_epoch), total - 1)
    if recipe.schedule == "cosine":
        # Warm-up is a prefix: the cosine starts at the peak lr at update `warmup` and ends at min_lr.
        return CosineLRScheduler(
            optimizer, t_initial=total - warmup, lr_min=recipe.min_lr, warmup_t=warmup, warmup_lr_init=0.0,
            warmup_prefix=True, t_in_epochs=False,
        )
    # timm applies milestone m from update m - 1 on; +1 makes update `round(fraction x total)` (the first
    # update of the milestone epoch) the first one at the lower lr, as torchvision's per-epoch MultiStepLR does.
    milestones = [round(fraction * total) + 1 for fraction in recipe.lr_milestones]
    return MultiStepLRScheduler(
        optimizer, decay_t=milestones, decay_rate=recipe.lr_decay, warmup_t=warmup, warmup_lr_init=0.0,
        warmup_prefix=False, t_in_epochs=False,
    )


def build_loss(recipe: RecipeSpec, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """timm Mixup/CutMix with soft-target cross-entropy when either is on; else (label-smoothed) cross-entropy."""
    if mixup_enabled(recipe):
        mixup = Mixup(
            mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, switch_prob=recipe.mixup_switch_prob,
            mode="batch", label_smoothing=recipe.label_smoothing, num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if recipe.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return None, nn.CrossEntropyLoss()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, num_classes: int, options: TrainOptions) -> dict[str, float]:
    """Top-1 and top-k (k = min(5, classes)) accuracy in % over the whole loader, summed over processes."""
    device, top_k = options.torch_device(), min(5, num_classes)
    model.eval()
    counts = [0.0, 0.0, 0.0]  # top-1 hits, top-k hits, images
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = _to_device(images, labels, device, options.channels_last)
        with options.autocast(device):
            logits = model(images)
        top1, topk = accuracy(logits.float(), labels, topk=(1, top_k))
        # timm's accuracy is a percentage of this batch; back to hit counts so batches of any size add up.
        counts[0] += round(top1.item() * len(labels) / 100)
        counts[1] += round(topk.item() * len(labels) / 100)
        counts[2] += len(labels)
    seconds = time.perf_counter() - start
    hits1, hitsk, images = distributed.all_reduce_sum(counts, device)
    if images == 0:
        raise SpecError("the validation loader is empty; give it at least one image")
    return {"top1": 100 * hits1 / images, "top5": 100 * hitsk / images, "img_per_s": images / max(seconds, 1e-9)}


def train_and_evaluate(
    model: nn.Module,
    recipe: RecipeSpec,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    num_classes: int,
    options: TrainOptions,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train `model` in place for recipe.epochs, evaluating after every epoch; resume from last.pt if present.

    Returns the result dict (see `_result`). A finished or diverged run writes final.json, and a later call
    with the same checkpoint_dir returns that file without training. `on_epoch` (rank 0 only) gets each new
    epoch's dict after that epoch's checkpoint is on disk.
    """
    if (options.checkpoint_dir / FINAL_RESULT).exists():
        return load_json(options.checkpoint_dir / FINAL_RESULT)
    with _deterministic_on_cpu(options.torch_device()):
        return _train(model, recipe, train_loader, val_loader, num_classes, options, on_epoch)


@contextlib.contextmanager
def _deterministic_on_cpu(device: torch.device) -> Iterator[None]:
    """Deterministic kernels where they are free (the CPU; on CUDA they cost speed); the old setting after."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train(model: nn.Module, recipe: RecipeSpec, train_loader: DataLoader, val_loader: DataLoader,
           num_classes: int, options: TrainOptions, on_epoch: Callable[[dict], None] | None) -> dict[str, Any]:
    wall_start = time.perf_counter()
    checkpoint_dir, world = options.checkpoint_dir, options.world
    check_effective_batch(recipe, train_loader, options)
    accumulation = options.accumulation_steps
    steps_per_epoch = len(train_loader) // accumulation
    if recipe.epochs > 0 and steps_per_epoch == 0:
        raise SpecError(
            f"train loader has {len(train_loader)} batches, fewer than accumulation_steps={accumulation}; "
            "use more images or fewer accumulation steps"
        )
    device = options.torch_device()
    seed_everything(options.seed + world.rank)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    raw_model = model.to(device, memory_format=torch.channels_last if options.channels_last else torch.preserve_format)
    optimizer = build_optimizer(raw_model, recipe)
    scheduler = build_schedule(optimizer, recipe, steps_per_epoch)
    mixup, criterion = build_loss(recipe, num_classes)
    fingerprint = {"recipe": spec_hash(recipe), "num_classes": num_classes}

    start_epoch, history, eval_rate, earlier_wall = 0, [], math.nan, 0.0
    if (checkpoint_dir / LAST_CHECKPOINT).exists():
        state = load_checkpoint(checkpoint_dir / LAST_CHECKPOINT)
        if state["fingerprint"] != fingerprint:
            raise SpecError(
                f"{checkpoint_dir / LAST_CHECKPOINT} was written for {state['fingerprint']}, not {fingerprint}; "
                "remove it or choose another checkpoint_dir"
            )
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        eval_rate, earlier_wall = state["eval_img_per_s"], state["wall_time_s"]
        _restore_rng(state["rng"], options, device, (train_loader, val_loader), epoch=start_epoch)
    resumed_from = start_epoch

    ddp_model = distributed.wrap_model(raw_model, world, options.sync_batchnorm)
    train_model = torch.compile(ddp_model) if options.compile else ddp_model
    show_progress = options.progress and world.is_main
    status, reason = "finished", ""

    if recipe.epochs == 0:
        evaluation = evaluate(train_model, val_loader, num_classes=num_classes, options=options)
        eval_rate = evaluation["img_per_s"]
        return _finish(_result(status, reason, history, evaluation, resumed_from, eval_rate,
                               earlier_wall + time.perf_counter() - wall_start, device), options)

    for epoch in range(start_epoch, recipe.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # data order = f(seed, epoch): the key to exact resume
        train_model.train()
        loss_sum, loss_count, images_seen, lr = 0.0, 0, 0, optimizer.param_groups[0]["lr"]
        bar = tqdm(total=steps_per_epoch * accumulation, desc=f"epoch {epoch + 1}/{recipe.epochs}",
                   disable=not show_progress, leave=False)
        epoch_start = time.perf_counter()
        batches = WaitTimer(train_loader)
        for micro_step, (images, labels) in enumerate(batches):
            if micro_step == steps_per_epoch * accumulation:
                break  # a trailing partial accumulation group is skipped, as a partial batch would be
            images, labels = _to_device(images, labels, device, options.channels_last)
            if mixup is not None:
                if len(labels) % 2:  # only a loader's odd last batch; Mixup pairs images
                    images, labels = images[:-1], labels[:-1]
                images, labels = mixup(images, labels)
            final_micro_step = (micro_step + 1) % accumulation == 0
            # DDP all-reduces gradients on every backward unless told to wait for the last micro-step.
            wait = not final_micro_step and isinstance(ddp_model, nn.parallel.DistributedDataParallel)
            sync = ddp_model.no_sync() if wait else contextlib.nullcontext()
            with sync:
                with options.autocast(device):
                    loss = criterion(train_model(images), labels)
                loss_value = _global_loss(loss, device)
                if not math.isfinite(loss_value):
                    status = "diverged"
                    reason = (f"non-finite loss {loss_value} at epoch {epoch + 1}, iteration {micro_step + 1} "
                              f"of {steps_per_epoch * accumulation}")
                    break
                (loss / accumulation).backward()
            loss_sum, loss_count, images_seen = loss_sum + loss_value, loss_count + 1, images_seen + len(labels)
            if final_micro_step:
                if recipe.clip_grad_norm > 0:
                    nn.utils.clip_grad_norm_(raw_model.parameters(), recipe.clip_grad_norm)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step_update(num_updates=epoch * steps_per_epoch + (micro_step + 1) // accumulation)
            bar.update()
            if show_progress and micro_step % 10 == 0:
                rate = images_seen * world.world_size / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
        bar.close()
        if status == "diverged":
            break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - epoch_start
        loss_sum, loss_count, images_seen = distributed.all_reduce_sum([loss_sum, loss_count, images_seen], device)
        evaluation = evaluate(train_model, val_loader, num_classes=num_classes, options=options)
        eval_rate = evaluation["img_per_s"]
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / loss_count,
            "lr": lr,
            "val_top1": evaluation["top1"],
            "val_top5": evaluation["top5"],
            "train_img_per_s": images_seen / train_seconds,
            # Seconds of this epoch's training loop, and how much of it this process waited for batches.
            "train_s": train_seconds,
            "data_wait_s": batches.seconds,
        }
        history.append(record)
        rng = distributed.all_gather_objects(_rng_state(device, (train_loader, val_loader)))
        if world.is_main:
            save_checkpoint({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history, "rng": rng,
                "eval_img_per_s": eval_rate, "fingerprint": fingerprint,
                "wall_time_s": earlier_wall + time.perf_counter() - wall_start,
            }, checkpoint_dir / LAST_CHECKPOINT)
        distributed.barrier()
        if on_epoch is not None and world.is_main:
            on_epoch(dict(record))

    if status == "diverged":
        last = {"top1": math.nan, "top5": math.nan}  # the weights are garbage now; history keeps the good epochs
    else:
        last = {"top1": history[-1]["val_top1"], "top5": history[-1]["val_top5"]}
    result = _result(status, reason, history, last, resumed_from, eval_rate,
                     earlier_wall + time.perf_counter() - wall_start, device)
    if status == "diverged":
        result["train_loss"] = loss_value
    return _finish(result, options)


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


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _global_loss(loss: torch.Tensor, device: torch.device) -> float:
    """This micro-step's loss, averaged over processes, so that every rank sees a divergence at the same step."""
    if distributed.is_distributed():
        return distributed.all_reduce_sum([loss.item()], device)[0] / torch.distributed.get_world_size()
    return loss.item()


def _result(status: str, reason: str, history: list[dict], evaluation: dict | None, resumed_from: int,
            eval_rate: float, wall_time_s: float, device: torch.device) -> dict[str, Any]:
    """The run's outcome. top1/top5 (%) and train_loss are the last epoch's (NaN after a divergence, or no
    epoch); train_img_per_s is the mean over all epochs, eval_img_per_s the last evaluation's; wall_time_s
    adds up every attempt of this run, interrupted ones included."""
    rates = [record["train_img_per_s"] for record in history]
    return {
        "status": status,
        "reason": reason,
        "epochs_completed": len(history),
        "resumed_from_epoch": resumed_from,
        "top1": evaluation["top1"] if evaluation else math.nan,
        "top5": evaluation["top5"] if evaluation else math.nan,
        "train_loss": history[-1]["train_loss"] if history else math.nan,
        "train_img_per_s": sum(rates) / len(rates) if rates else math.nan,
        "eval_img_per_s": eval_rate,
        "peak_memory_mb": _peak_memory_mb(device),
        "wall_time_s": wall_time_s,
        # Sums over the epochs in `history`: training loops, and the part of them spent waiting for data.
        "train_s": sum(record.get("train_s", math.nan) for record in history),
        "data_wait_s": sum(record.get("data_wait_s", math.nan) for record in history),
        "history": history,
    }


def _finish(result: dict[str, Any], options: TrainOptions) -> dict[str, Any]:
    if options.world.is_main:
        save_json(result, options.checkpoint_dir / FINAL_RESULT)
    distributed.barrier()
    return result


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # On the CPU: the whole process's peak resident set (Linux reports KiB), model and data included,
    # since the process began; not just this run's share.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rng_state(device: torch.device, loaders: tuple[DataLoader, ...]) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        # A loader given its own generator draws its worker seeds from it instead of from torch's.
        "loaders": [loader.generator.get_state() if loader.generator is not None else None for loader in loaders],
    }


def _restore_rng(states: list[dict], options: TrainOptions, device: torch.device,
                 loaders: tuple[DataLoader, ...], epoch: int) -> None:
    """Put every RNG back where it was when the checkpoint was written (exact resume needs the same world size)."""
    if len(states) != options.world.world_size:
        seed_everything(options.seed + options.world.rank + epoch * options.world.world_size)
        return
    state = states[options.world.rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for loader, generator_state in zip(loaders, state["loaders"]):
        if loader.generator is not None and generator_state is not None:
            loader.generator.set_state(generator_state)
