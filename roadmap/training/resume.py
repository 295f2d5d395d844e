"""The resume point of a run: weights, optimizer, schedule, history and every RNG, saved after each epoch."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import SpecError
from ..spec import RecipeSpec, spec_hash
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import WorldInfo
from .result import EpochRecord


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global generators from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fingerprint(recipe: RecipeSpec, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must have been written for to be resumed."""
    return {"recipe": spec_hash(recipe), "num_classes": num_classes}


# What a resume point holds (save_state).
RESUME_KEYS = frozenset({"model", "optimizer", "scheduler", "epoch", "history", "rng", "eval_img_per_s",
                         "fingerprint", "wall_time_s"})


def save_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
               history: list[EpochRecord], rng: list[dict[str, Any]], eval_img_per_s: float,
               fingerprint: dict[str, Any], wall_time_s: float) -> None:
    save_checkpoint({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "epoch": epoch, "history": [vars(record) for record in history], "rng": rng,
        "eval_img_per_s": eval_img_per_s, "fingerprint": fingerprint, "wall_time_s": wall_time_s,
    }, path)


def load_state(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The saved state, its history as EpochRecords; a checkpoint of another recipe is a SpecError.

    Read with weights_only=True (no code runs). The previous version's checkpoints, whose NumPy RNG state is a
    uint32 array, still load and resume exactly (checkpoint.LEGACY_NUMPY_GLOBALS).
    """
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not RESUME_KEYS <= set(state):
        raise CheckpointError(f"{path} is not a resume point written by the training engine (it needs "
                              f"{', '.join(sorted(RESUME_KEYS))}); remove it or choose another checkpoint_dir")
    if state["fingerprint"] != expected:
        raise SpecError(f"{path} was written for {state['fingerprint']}, not {expected}; "
                        "remove it or choose another checkpoint_dir")
    state["history"] = [EpochRecord.from_dict(record) for record in state["history"]]
    return state


def rng_state(device: torch.device, loaders: tuple[DataLoader, ...]) -> dict[str, Any]:
    """Every generator's state as tensors and plain values, which torch.load(weights_only=True) reads."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        # NumPy's MT19937 state: its 624 uint32 keys as an int64 tensor (a NumPy array would need unpickling).
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                  "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
        "python": random.getstate(),  # a tuple of ints
        # A loader given its own generator draws its worker seeds from it instead of from torch's.
        "loaders": [loader.generator.get_state() if loader.generator is not None else None for loader in loaders],
    }


def restore_rng(states: list[dict[str, Any]], *, seed: int, world: WorldInfo, device: torch.device,
                loaders: tuple[DataLoader, ...], epoch: int) -> None:
    """Every RNG back where it was when the checkpoint was written (exact resume needs the same world size)."""
    if len(states) != world.world_size:
        seed_everything(seed + world.rank + epoch * world.world_size)
        return
    state = states[world.rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(state["python"])
    for loader, generator_state in zip(loaders, state["loaders"]):
        if loader.generator is not None and generator_state is not None:
            loader.generator.set_state(generator_state)


def _numpy_state(saved: dict[str, Any] | tuple) -> tuple:
    """np.random.set_state's tuple from a saved state: this version's dict, or the previous version's tuple."""
    if isinstance(saved, tuple):
        return saved
    keys = saved["keys"].numpy().astype(np.uint32)
    return saved["kind"], keys, saved["position"], saved["has_gauss"], saved["cached_gaussian"]
