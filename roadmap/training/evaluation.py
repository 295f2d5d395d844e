"""Accuracy over a validation loader, summed over processes, with every image's top-k classes when asked for."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from ..errors import SpecError
from ..predictions import Predictions, write_predictions
from ..schema import Artifact
from . import distributed
from .distributed import WorldInfo
from .options import TrainOptions, to_device


@dataclass(frozen=True)
class Evaluation:
    """Accuracy over a whole validation loader (all processes), in %; predictions when asked for."""

    top1: float
    top5: float  # top-k with k = min(5, classes)
    img_per_s: float  # this process's images per second
    predictions: Predictions | None = None


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, num_classes: int, options: TrainOptions,
             predictions: bool = False, pad_last_batch: bool = False) -> Evaluation:
    """Top-1 and top-k (k = min(5, classes)) accuracy in % over the whole loader, summed over processes.

    With `predictions`, every image's top-k classes too, gathered from all processes and ordered by the
    image's index in the split (the loader's sampler must name its indices: ShardSampler or sequential).
    With `pad_last_batch`, a last batch smaller than the loader's batch size is padded with zero images whose
    outputs are dropped: a compiled model then sees one shape and never recompiles for it (eval-mode
    networks treat each image on its own, so the padding changes no other image's output).

    Hits and predictions stay on the device until the loader is done: no host sync per batch.
    """
    device, top_k = options.torch_device(), min(5, num_classes)
    model.eval()
    hits = torch.zeros(2, dtype=torch.int64, device=device)  # (top-1, top-k)
    images = 0
    ranked: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    start = time.perf_counter()
    for batch_images, labels in loader:
        batch_images, labels = to_device(batch_images, labels, device, options.channels_last)
        count = len(labels)
        if pad_last_batch and isinstance(loader.batch_size, int) and count < loader.batch_size:
            batch_images = _padded(batch_images, loader.batch_size, options.memory_format)
        with options.autocast(device):
            logits = model(batch_images)[:count]
        top = logits.float().topk(top_k, dim=1).indices
        hits[0] += (top[:, 0] == labels).sum()
        hits[1] += (top == labels[:, None]).any(dim=1).sum()
        images += count
        if predictions:
            ranked.append(top)
            targets.append(labels)
    hits1, hitsk = hits.tolist()  # sync point: the first host read of this evaluation
    seconds = time.perf_counter() - start
    hits1, hitsk, total = distributed.all_reduce_sum([hits1, hitsk, images], device)
    if total == 0:
        raise SpecError("the validation loader is empty; give it at least one image")
    kept = _gather_predictions(loader, ranked, targets, top_k) if predictions else None
    return Evaluation(top1=100 * hits1 / total, top5=100 * hitsk / total, img_per_s=images / max(seconds, 1e-9),
                      predictions=kept)


def _padded(images: torch.Tensor, batch_size: int, memory_format: torch.memory_format) -> torch.Tensor:
    padding = images.new_zeros((batch_size - len(images), *images.shape[1:]))
    # The strides of a full batch, so that the compiled graph's guards hold.
    return torch.cat([images, padding]).contiguous(memory_format=memory_format)


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
             torch.cat(targets).cpu().numpy() if targets else np.zeros(0, np.int64),
             torch.cat(ranked).cpu().numpy() if ranked else np.zeros((0, top_k), np.int64))
    parts = distributed.all_gather_objects(local)  # sync point
    index, label, top = (np.concatenate([part[field] for part in parts]) for field in range(3))
    order = np.argsort(index, kind="stable")
    return Predictions(index=index[order], label=label[order], top_k=top[order])


def publish_predictions(evaluation: Evaluation, folder: Path, *, best: bool, world: WorldInfo) -> None:
    """The epoch's predictions as predictions.csv, and as predictions_best.csv when it is the best so far."""
    if not world.is_main or evaluation.predictions is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    names = [Artifact.PREDICTIONS] + ([Artifact.BEST_PREDICTIONS] if best else [])
    for name in names:
        temporary = folder / f".{name}.tmp"
        write_predictions(temporary, evaluation.predictions)
        os.replace(temporary, folder / name)
