"""Seeds that are pure functions of (seed, epoch, index), and saving the global generators around random draws."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info


def seed_generators(sample_seed: int) -> None:
    random.seed(sample_seed)
    np.random.seed(sample_seed % 2**32)
    torch.default_generator.manual_seed(sample_seed)  # torch.manual_seed would also queue CUDA seeding: slow


def derived_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of the whole numbers `keys` (mixed by NumPy's SeedSequence)."""
    state = np.random.SeedSequence([key % 2**63 for key in keys]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def torch_generator(device: torch.device) -> torch.Generator:
    """torch's global generator of `device` (the CPU's, or that GPU's)."""
    return torch.cuda.default_generators[_cuda_index(device)] if device.type == "cuda" else torch.default_generator


@contextlib.contextmanager
def saved_generators(device: torch.device | None = None) -> Iterator[None]:
    """The global generators (Python, NumPy, torch's CPU one and a GPU `device`'s) as they were before the block."""
    if get_worker_info() is not None:  # a worker process: nothing else draws from its generators
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    on_gpu = device is not None and device.type == "cuda"
    with torch.random.fork_rng(devices=[_cuda_index(device)] if on_gpu else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

