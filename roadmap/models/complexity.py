"""Parameter and MAC counts of a network (the paper's 'GFLOPs' are multiply-accumulates)."""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..spec import ArchSpec
from .network import build_model


@dataclass(frozen=True)
class Complexity:
    # Trainable and frozen parameters together.
    params: int
    # Giga multiply-accumulates of one image's forward pass, conv and linear layers only.
    gmacs: float
    image_size: tuple[int, int]


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one Conv2d or Linear call: one per weight use per output value."""
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
    return output.numel() * module.in_features


def count_complexity(model: nn.Module, image_size: int | tuple[int, int] = 224) -> Complexity:
    """Parameters and GMACs of `model` for one 3-channel image of `image_size` (side or (H, W)).

    MACs follow the paper's convention (Table 10, verified on torchvision's ResNet-50: 4.09):
    only convolutions and linear layers count, one per multiply-accumulate; norms, activations,
    pooling and residual adds count nothing. The count runs on a shape-only (meta) copy, so it is
    fast at any size and leaves `model` untouched.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    params = sum(p.numel() for p in model.parameters())
    meta_model = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    meta_model.eval()
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, output)

    hooks = [m.register_forward_hook(count) for m in meta_model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            meta_model(torch.empty(1, 3, height, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return Complexity(params=params, gmacs=total / 1e9, image_size=(height, width))


def _on_meta(model: nn.Module) -> bool:
    return all(p.is_meta for p in model.parameters())


@functools.lru_cache(maxsize=1024)
def arch_complexity(arch: ArchSpec, image_size: int | tuple[int, int] = 224, num_classes: int = 1000) -> Complexity:
    """Complexity of the network an ArchSpec describes, built shape-only: no memory. Remembered per process
    (a frozen spec names one network), since a plan asks for the same ones again."""
    with torch.device("meta"):
        model = build_model(arch, num_classes)
    return count_complexity(model, image_size)
