"""Seeded loaders: the train order and augmentations are a function of (seed, epoch), batches go to the device."""
from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.loader import PrefetchLoader
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .checks import DataError
from .datasets import Datasets
from .seeding import derived_seed, saved_generators, torch_generator


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler whose items are (index, sample_seed): order AND augmentation draws depend only
    on (seed, epoch, index), whatever the number of workers and whether they persist across epochs."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in super().__iter__():
            yield index, derived_seed(self.seed, self.epoch, index)


class ShardSampler(Sampler):
    """Every `world_size`-th index from `rank`, in order, with no padding: each image is seen exactly once
    across processes (shards differ by at most one image), unlike DistributedSampler, which repeats
    images to even the shards. Sum (correct, count) over processes rather than averaging accuracies."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class DeviceBatches(PrefetchLoader):
    """timm's PrefetchLoader (uint8 batches moved to the device and normalized there; on CUDA the copy of
    the next batch overlaps the current step) plus the recipe's random erasing on each normalized batch.

    The erasing draws come from (seed, epoch, rank, batch index), so a resumed or repeated epoch erases
    the same patches whatever the number of loader workers; the global generators are left as they were.
    """

    def __init__(self, loader: DataLoader, *, device: torch.device, random_erasing: float = 0.0):
        super().__init__(loader, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, device=device)
        # "pixel": per-pixel normal noise in normalized units, the official ConvNeXt setting (--remode pixel).
        self.erasing = RandomErasing(random_erasing, mode="pixel", device=device) if random_erasing > 0 else None

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size

    @property
    def generator(self) -> torch.Generator | None:
        return self.loader.generator

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch_key = [getattr(self.loader.sampler, name, 0) for name in ("seed", "epoch", "rank")]
        for batch_index, (images, labels) in enumerate(super().__iter__()):
            if self.erasing is not None:
                seed = derived_seed(*epoch_key, batch_index)
                with saved_generators(images.device):  # timm's erasing draws from Python's and torch's
                    random.seed(seed)
                    torch_generator(images.device).manual_seed(seed)
                    images = self.erasing(images)
            yield images, labels


def build_loaders(datasets: Datasets, batch_size: int, *, workers: int, seed: int, rank: int = 0,
                  world_size: int = 1, device: torch.device | str = "cpu",
                  eval_batch_size: int | None = None) -> tuple[DeviceBatches, DeviceBatches]:
    """(train, val) loaders for one process of `world_size`; `batch_size` is per process (the val loader's too,
    unless `eval_batch_size` is given). They give normalized float32 batches on `device`, train batches with the
    recipe's random erasing.

    Call `train_loader.sampler.set_epoch(epoch)` before each epoch: the train order and augmentations
    are then a pure function of (seed, epoch), so a resumed run sees exactly what an uninterrupted one saw.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank={rank} is not valid for world_size={world_size}; choose 0 to {world_size - 1}")
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} is not valid; a whole number >= 1")
    if len(datasets.train) < batch_size * world_size:
        raise DataError(f"the train split has {len(datasets.train)} images, fewer than one batch "
                        f"({batch_size} x {world_size} processes)")
    device = torch.device(device)
    common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    train_sampler = SeededDistributedSampler(datasets.train, num_replicas=world_size, rank=rank,
                                             shuffle=True, seed=seed, drop_last=True)
    # Its own generator, so that starting an epoch does not draw from torch's global one.
    train = DataLoader(datasets.train, batch_size=batch_size, sampler=train_sampler, drop_last=True,
                       generator=torch.Generator().manual_seed(seed), **common)
    val = DataLoader(datasets.val, batch_size=eval_batch_size or batch_size,
                     sampler=ShardSampler(len(datasets.val), rank, world_size),
                     shuffle=False, drop_last=False, generator=torch.Generator().manual_seed(seed), **common)
    erasing = datasets.random_erasing
    return DeviceBatches(train, device=device, random_erasing=erasing), DeviceBatches(val, device=device)
