"""Named model sizes, ResNet-50 to ConvNeXt-XL, as ArchSpecs, and the reference models they equal."""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from ..spec import ArchSpec, SpecError, choice
from ..steps import load_roadmap

if TYPE_CHECKING:
    from torch import nn

# Blocks per stage of torchvision's / timm's ResNets (v1.5 bottleneck, the ArchSpec defaults).
RESNET_DEPTHS: dict[str, tuple[int, ...]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
    "resnet200": (3, 24, 36, 3),
}

# ConvNeXt sizes (paper Section 3): blocks per stage, base width C (stages C, 2C, 4C, 8C), and the
# stochastic-depth rate of ImageNet-1K training (Table 5: 0.1 / 0.4 / 0.5 / 0.5 for T / S / B / L).
# XL was only ever trained with ImageNet-22K pre-training (official TRAINING.md: 0.2 there, 0.4 when
# fine-tuning); 0.5 carries over B's and L's ImageNet-1K rate, where the paper's rates level off.
CONVNEXT_SIZES: dict[str, tuple[tuple[int, ...], int, float]] = {
    "convnext_tiny": ((3, 3, 9, 3), 96, 0.1),
    "convnext_small": ((3, 3, 27, 3), 96, 0.4),
    "convnext_base": ((3, 3, 27, 3), 128, 0.5),
    "convnext_large": ((3, 3, 27, 3), 192, 0.5),
    "convnext_xlarge": ((3, 3, 27, 3), 256, 0.5),
}

# The roadmap whose last adopted step is ConvNeXt-T; every ConvNeXt size takes its flags.
CONVNEXT_ROADMAP = "resnet50_to_convnext_t"

# Sizes each library implements; torchvision has no ResNet-200 and no ConvNeXt-XL.
LIBRARIES = ("torchvision", "timm")
TORCHVISION_SIZES = (
    "resnet50", "resnet101", "resnet152", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large"
)


SIZE_NAMES = (*RESNET_DEPTHS, *CONVNEXT_SIZES)


@functools.cache
def model_sizes() -> dict[str, ArchSpec]:
    """Every named size as an ArchSpec; the ConvNeXt ones take the roadmap's last adopted step's flags.

    Read on first use, not at import: importing this module must not need the step files.
    """
    sizes = {name: ArchSpec(depths=depths) for name, depths in RESNET_DEPTHS.items()}
    convnext_t = [step for step in load_roadmap(CONVNEXT_ROADMAP).steps if step.adopted][-1].arch
    for name, (depths, base_width, drop_path_rate) in CONVNEXT_SIZES.items():
        sizes[name] = dataclasses.replace(
            convnext_t, depths=depths, base_width=base_width, drop_path_rate=drop_path_rate
        )
    return sizes


def get_size(name: str) -> ArchSpec:
    """The ArchSpec of a named size; build it with `build_model(get_size(name), num_classes)`."""
    return model_sizes()[choice("model size", name, SIZE_NAMES)]


def family(name: str) -> str:
    """'resnet' or 'convnext'."""
    get_size(name)
    return "resnet" if name in RESNET_DEPTHS else "convnext"


def reference_model(name: str, library: str | None = None, num_classes: int = 1000) -> tuple[nn.Module, str]:
    """The reference implementation of a named size, randomly initialized, and its interop string.

    `library` is "torchvision" or "timm"; by default torchvision where it has the size, else timm.
    Nothing is downloaded (no pretrained weights). Use the interop string with
    `roadmap.interop.export_state_dict` / `import_state_dict`.
    """
    spec = get_size(name)
    if library is None:
        library = "torchvision" if name in TORCHVISION_SIZES else "timm"
    choice("library", library, LIBRARIES)
    if library == "torchvision" and name not in TORCHVISION_SIZES:
        raise SpecError(f"torchvision has no {name!r}; use library 'timm' or one of: {', '.join(TORCHVISION_SIZES)}")
    is_convnext = family(name) == "convnext"
    if library == "timm":
        import timm

        extra = {"drop_path_rate": spec.drop_path_rate} if is_convnext else {}
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **extra)
    else:
        import torchvision

        extra = {"stochastic_depth_prob": spec.drop_path_rate} if is_convnext else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    return model, f"{library}.{family(name)}"
