"""How an effective batch splits into processes, gradient accumulation and the micro-batch of one forward pass."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..spec import RecipeSpec, whole_number
from .optim import mixup_enabled


@dataclass(frozen=True)
class BatchSplit:
    """effective batch = micro_batch x accumulation_steps x world_size."""

    # Images per forward pass of one process: every BatchNorm statistic in training is over this many.
    micro_batch: int
    # Micro-batches whose gradients add up to one optimizer step.
    accumulation_steps: int
    # Training processes (torchrun or SLURM tasks), each with its own share of every batch.
    world_size: int

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accumulation_steps * self.world_size

    @property
    def per_process(self) -> int:
        return self.micro_batch * self.accumulation_steps

    def describe(self) -> str:
        return (f"batch {self.effective_batch} ({self.micro_batch} x {self.accumulation_steps} accumulation x "
                f"{self.world_size} processes)")


def split_batch(batch_size: int, world_size: int, micro_batch: int | None) -> BatchSplit:
    """The split of `batch_size` over `world_size` processes with `micro_batch` images per forward pass.

    `micro_batch` None: each process runs its whole share at once. A micro-batch larger than a
    process's share, or one that does not divide it, is a one-line SpecError saying what would.
    """
    whole_number("batch size", batch_size, 1)
    whole_number("processes", world_size, 1)
    if batch_size % world_size:
        raise SpecError(f"batch size {batch_size} does not divide across {world_size} processes; "
                        f"choose a multiple of {world_size}")
    per_process = batch_size // world_size
    micro = per_process if micro_batch is None else whole_number("micro-batch", micro_batch, 1)
    if micro > per_process:
        raise SpecError(f"the micro-batch {micro} (images per forward pass and per BatchNorm statistic; "
                        f"--micro-batch) is larger than a process's share of the batch, "
                        f"{per_process} (batch size {batch_size} / {world_size} processes); use at most "
                        f"{batch_size // micro} processes, a batch size of at least {micro * world_size}, or "
                        f"--micro-batch {per_process}")
    if per_process % micro:
        raise SpecError(f"the micro-batch {micro} (images per forward pass and per BatchNorm statistic; "
                        f"--micro-batch) does not divide a process's share of the batch, "
                        f"{per_process} (batch size {batch_size} / {world_size} processes); choose a divisor of "
                        f"{per_process}")
    return BatchSplit(micro_batch=micro, accumulation_steps=per_process // micro, world_size=world_size)


def check_effective_batch(recipe: RecipeSpec, batch: int | None, world: int, steps: int) -> int:
    """`batch` (a loader's per-process batch), after checking that `world` processes x `steps` accumulation
    steps of it add up to the recipe's effective batch."""
    if not isinstance(batch, int):
        raise SpecError(f"train loader batch size {batch!r} is not valid; give the DataLoader a whole batch_size")
    if batch * world * steps != recipe.batch_size:
        raise SpecError(f"effective batch {batch} per process x {world} processes x {steps} accumulation steps = "
                        f"{batch * world * steps} does not match recipe batch_size={recipe.batch_size}")
    if mixup_enabled(recipe) and batch % 2:
        raise SpecError(f"per-process batch {batch} is not valid with mixup/cutmix (pairs images); use an even batch")
    return batch
