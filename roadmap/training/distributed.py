"""torchrun-aware process-group setup, DDP wrapping, barriers and all-reduce helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import SpecError
from ..spec import DEVICES, choice


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits among the training processes."""

    rank: int = 0
    # Index of this process on its node; picks the GPU.
    local_rank: int = 0
    world_size: int = 1
    # "cpu" or "cuda:<local_rank>".
    device: str = "cpu"
    # Rank 0: the only process that writes files, logs and shows progress.
    is_main: bool = True


SINGLE_PROCESS = WorldInfo()


def init_distributed(device: str | None = None) -> WorldInfo:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); a single process when RANK/WORLD_SIZE are unset.

    `device` is "cpu" or "cuda"; None picks CUDA when it is available.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("device='cuda' is not valid here: no CUDA device is visible; choose device='cpu'")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if device == "cuda":
            torch.cuda.set_device(0)
        return WorldInfo(device="cuda:0" if device == "cuda" else "cpu")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if device == "cuda":
            # Bound to its GPU: NCCL forms the communicator now (an error shows here, not at the first
            # collective) and barriers know their device.
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo")
    return WorldInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        device=f"cuda:{local_rank}" if device == "cuda" else "cpu",
        is_main=rank == 0,
    )


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap_model(model: nn.Module, world: WorldInfo, sync_batchnorm: bool = False) -> nn.Module:
    """DDP around `model` (already on its device, maybe compiled) when there are several processes; otherwise
    `model` itself.

    SyncBatchNorm replaces BatchNorm only when asked, with several processes, and when the model has BN.
    Gradients are views of DDP's all-reduce buckets (`gradient_as_bucket_view`): no copy between the two and
    one gradient-sized buffer less; the engine then zeroes gradients instead of freeing them.
    """
    if world.world_size == 1 or not is_distributed():
        return model
    if sync_batchnorm and has_batchnorm(model):
        if not world.device.startswith("cuda"):
            raise SpecError("sync_batchnorm=True is not valid on device='cpu'; SyncBatchNorm needs CUDA")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [world.local_rank] if world.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process.

    What DDP does before each of its forward passes (broadcast_buffers=True); evaluation runs the model
    outside DDP, so it does it once first: every process then evaluates the weights rank 0 checkpoints.
    """
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device | str) -> list[float]:
    """Element-wise sum of `values` over all processes (float64, so counts stay exact)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, indexed by rank (a list of one outside torchrun)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
