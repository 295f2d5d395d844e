"""One epoch of training: forward, backward and an optimizer step per accumulation group, with no host sync per
micro-step; and how long the loop waited for its data."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from timm.data import Mixup
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..spec import RecipeSpec
from . import distributed
from .options import TrainOptions, to_device

# Micro-steps between two reads of the losses on the host (one sync each, plus one all-reduce under DDP).
# A non-finite loss is found at the next read; the steps run after it are lost with the diverged run anyway.
LOSS_READ_INTERVAL = 50
# Above this share of its training loop spent waiting for batches, an epoch says so (one line), if it waited
# at least DATA_WAIT_MINIMUM_S: the few batches of a smoke test's epoch are not worth a line.
DATA_WAIT_WARNING = 0.10
DATA_WAIT_MINIMUM_S = 1.0


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


class LossReadings:
    """The micro-steps' losses, kept on the device and read on the host in groups.

    `read()` averages the pending losses over processes (one all-reduce), adds them to the epoch's sum in
    order, and returns the micro-step and value of the first non-finite one, if any: every rank sees the
    same losses, so every rank stops at the same step. Sums equal those of reading each loss at once.
    """

    def __init__(self, stats: EpochTraining):
        self.stats = stats
        self.pending: list[torch.Tensor] = []
        self.first_pending = 0  # the 0-based micro-step of pending[0]

    def add(self, loss: torch.Tensor, micro_step: int) -> None:
        if not self.pending:
            self.first_pending = micro_step
        self.pending.append(loss.detach())

    def read(self) -> tuple[int, float] | None:
        if not self.pending:
            return None
        values = torch.stack(self.pending).to(torch.float64)
        if distributed.is_distributed():
            torch.distributed.all_reduce(values)  # sync point: the pending losses of every process, summed
            world_size = torch.distributed.get_world_size()
            losses = [value / world_size for value in values.tolist()]
        else:
            losses = values.tolist()  # sync point
        first, self.pending = self.first_pending, []
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                return first + offset, loss
            self.stats.loss_sum, self.stats.loss_count = self.stats.loss_sum + loss, self.stats.loss_count + 1
            self.stats.last_loss = loss
        return None


def train_one_epoch(train_model: nn.Module, ddp_model: nn.Module, raw_model: nn.Module, criterion: nn.Module,
                    mixup: Mixup | None, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler,
                    recipe: RecipeSpec, epoch: int, steps_per_epoch: int, options: TrainOptions,
                    device: torch.device) -> EpochTraining:
    """One pass over the training loader: forward, backward, and an optimizer step every accumulation group.

    `train_model` is what runs (maybe compiled, maybe in DDP), `ddp_model` the DDP wrapper (or the model
    itself) whose gradient sync we hold back, `raw_model` the plain module whose gradients we clip.
    Nothing in a micro-step reads a tensor on the host: the losses are read every LOSS_READ_INTERVAL
    micro-steps and at the end, where a non-finite one ends the epoch as diverged, naming its micro-step.
    """
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)  # data order = f(seed, epoch): the key to exact resume
    train_model.train()
    accumulation, world = options.accumulation_steps, options.world
    micro_steps = steps_per_epoch * accumulation
    stats = EpochTraining(lr=optimizer.param_groups[0]["lr"])
    losses = LossReadings(stats)
    show = options.progress and world.is_main
    bar = tqdm(total=micro_steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not show, leave=False)
    is_ddp = isinstance(ddp_model, nn.parallel.DistributedDataParallel)
    start = time.perf_counter()
    batches = WaitTimer(loader)
    for micro_step, (images, labels) in enumerate(batches):
        if micro_step == micro_steps:
            break  # a trailing partial accumulation group is skipped, as a partial batch would be
        images, labels = to_device(images, labels, device, options.channels_last)
        if mixup is not None:
            if len(labels) % 2:  # only a loader's odd last batch; Mixup pairs images
                images, labels = images[:-1], labels[:-1]
            images, labels = mixup(images, labels)
        last_micro_step = (micro_step + 1) % accumulation == 0
        # Sync point: DDP all-reduces gradients in every backward unless told to wait for the group's last.
        with ddp_model.no_sync() if is_ddp and not last_micro_step else contextlib.nullcontext():
            with options.autocast(device):
                loss = criterion(train_model(images), labels)
            (loss / accumulation).backward()
        losses.add(loss, micro_step)
        stats.images += len(labels)
        if last_micro_step:
            if recipe.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(raw_model.parameters(), recipe.clip_grad_norm)
            stats.lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            # Under DDP with gradient_as_bucket_view, zeroing keeps the gradients views of DDP's buckets.
            optimizer.zero_grad(set_to_none=not is_ddp)
            scheduler.step_update(num_updates=epoch * steps_per_epoch + (micro_step + 1) // accumulation)
        bar.update()
        if (micro_step + 1) % LOSS_READ_INTERVAL == 0 and _diverged(losses.read(), stats, epoch, micro_steps):
            bar.close()
            return stats
        if show and (micro_step + 1) % LOSS_READ_INTERVAL == 0:
            rate = stats.images * world.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{stats.last_loss:.4f}", lr=f"{stats.lr:.2e}", img_s=f"{rate:.0f}")
    bar.close()
    if _diverged(losses.read(), stats, epoch, micro_steps):
        return stats
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync point: CUDA kernels run asynchronously
    stats.seconds, stats.wait_seconds = time.perf_counter() - start, batches.seconds
    stats.loss_sum, stats.loss_count, stats.images = distributed.all_reduce_sum(
        [stats.loss_sum, stats.loss_count, stats.images], device)
    return stats


def _diverged(first_non_finite: tuple[int, float] | None, stats: EpochTraining, epoch: int,
              micro_steps: int) -> bool:
    if first_non_finite is None:
        return False
    micro_step, loss = first_non_finite
    stats.diverged = f"non-finite loss {loss} at epoch {epoch + 1}, iteration {micro_step + 1} of {micro_steps}"
    stats.last_loss = loss
    return True


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


def data_wait_warning(wait_s: float, train_s: float, *, epoch: int, workers: int | None) -> str | None:
    """One line when the loop waited for data more than DATA_WAIT_WARNING of its time, saying how to fix it;
    None otherwise."""
    share = wait_s / train_s if train_s > 0 else 0.0
    if share <= DATA_WAIT_WARNING or wait_s < DATA_WAIT_MINIMUM_S:
        return None
    if workers == 0:
        loader = "the loader, running in the training process itself (0 workers),"
    else:
        loader = f"{workers} loader worker(s)" if workers is not None else "the loader"
    return (f"warning: the training loop waited for data {100 * share:.0f} % of epoch {epoch} ({wait_s:.1f} of "
            f"{train_s:.1f} s; over {100 * DATA_WAIT_WARNING:.0f} %, the model idles): {loader} cannot keep up. "
            "Give each process more workers (--workers, up to its free cores), decode images once "
            "(--data-cache DIR for imagefolder data), or give the job more CPU cores per GPU")


def loader_workers(loader: object) -> int | None:
    """The worker processes of a DataLoader, or of the DataLoader a wrapper holds (timm's PrefetchLoader)."""
    for candidate in (loader, getattr(loader, "loader", None)):
        workers = getattr(candidate, "num_workers", None)
        if isinstance(workers, int):
            return workers
    return None


def say(line: str) -> None:
    """A line on stderr that does not break a progress bar."""
    tqdm.write(line, file=sys.stderr)
