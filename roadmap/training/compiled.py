"""torch.compile for one run: a fresh dynamo cache per run, and the recompiles it made counted."""
from __future__ import annotations

import torch
from torch import nn

# One recompile is expected per run: the model's forward is compiled in training mode, then again for
# evaluation (eval-mode modules and no autograd); every later call finds one of the two graphs.
EXPECTED_RECOMPILES = 1


def compile_for_run(model: nn.Module) -> nn.Module:
    """`torch.compile(model)` after clearing dynamo's caches.

    All units of an inline study run in one process, and every network shares the forward code of one class:
    without the reset each unit's graphs would count against dynamo's recompile limit (8 per code object)
    of the units before it, and from the ninth on dynamo would silently run the model eagerly.
    """
    reset_compile_cache()
    return torch.compile(model)


def reset_compile_cache() -> None:
    """Forget every compiled graph and the recompile counts (dynamo's caches are per process)."""
    torch._dynamo.reset()


def recompiles_so_far() -> int | None:
    """Recompilations since the last `torch._dynamo.reset()`: compilations of a function beyond its first
    (a guard failed: another mode, shape or dtype). None when this torch does not expose the count."""
    convert_frame = getattr(torch._dynamo, "convert_frame", None)
    counter = getattr(convert_frame, "FRAME_COMPILE_COUNTER", None)  # torch 2.x: frame id -> compilations
    if counter is None:
        return None
    return sum(max(0, compilations - 1) for compilations in counter.values())
