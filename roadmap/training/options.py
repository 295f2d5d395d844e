"""How a training runs (device, precision, memory format, compilation, accumulation, processes), apart from what
it trains (the recipe)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SpecError
from ..spec import DEVICES, PRECISIONS, choice, whole_number
from .distributed import SINGLE_PROCESS, WorldInfo


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
    # torch.compile the model (before DDP wraps it); evaluation runs the same compiled module.
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

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on `device` (asynchronous copies from pinned memory), images in the run's memory format."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)
