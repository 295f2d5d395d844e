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
    meta_model = copy.deepcopy(model).to("meta")
    return _complexity(meta_model, _image_hw(image_size))


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def _complexity(meta_model: nn.Module, image_hw: tuple[int, int]) -> Complexity:
    """Count on a meta model this function may change (its norms are dropped before the forward pass)."""
    params = sum(p.numel() for p in meta_model.parameters())
    _drop_norms(meta_model)
    meta_model.eval()
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, output)

    for module in meta_model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    with torch.no_grad():
        meta_model(torch.empty(1, 3, *image_hw, device="meta"))
    return Complexity(params=params, gmacs=total / 1e9, image_size=image_hw)


# Norms keep the shape and count nothing; on meta tensors BatchNorm still runs its decomposition, which was
# two thirds of a plan's time (17 variants, each counted at two sizes).
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _drop_norms(model: nn.Module) -> None:
    """Replace every norm of a (meta) copy by an identity: the conv and linear layers see the same shapes."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NORMS):
                setattr(parent, name, nn.Identity())


@functools.lru_cache(maxsize=1024)
def arch_complexity(arch: ArchSpec, image_size: int | tuple[int, int] = 224, num_classes: int = 1000) -> Complexity:
    """Complexity of the network an ArchSpec describes, built shape-only: no memory. Remembered per process
    (a frozen spec names one network), since a plan asks for the same ones again."""
    with torch.device("meta"):
        model = build_model(arch, num_classes)
    return _complexity(model, _image_hw(image_size))
