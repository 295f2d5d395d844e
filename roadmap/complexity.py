"""Parameter and MAC counts of a network (the paper's 'GFLOPs' are multiply-accumulates)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Complexity:
    # Trainable and frozen parameters together.
    params: int
    # Giga multiply-accumulates of one image's forward pass, conv and linear layers only.
    gmacs: float
    image_size: tuple[int, int]


def count_complexity(model: nn.Module, image_size: int | tuple[int, int] = 224) -> Complexity:
    """Parameters and GMACs of `model` for one 3-channel image of `image_size` (side or (H, W)).

    MACs follow the paper's convention (Table 10): only convolutions and matrix products count,
    one per multiply-accumulate; FlopCounterMode counts two FLOPs per MAC, hence the halving.
    Norms, activations and pooling add nothing. The count runs on a shape-only (meta) copy, so it
    is fast at any size and leaves `model` untouched.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    params = sum(p.numel() for p in model.parameters())
    meta_model = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(1, 3, height, width, device="meta"))
    return Complexity(params=params, gmacs=counter.get_total_flops() / 2 / 1e9, image_size=(height, width))
