"""`build_model(arch)`: stem, stages of residual blocks, pooled head, for any valid ArchSpec."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import ArchSpec, whole_number
from .layers import STEMS, Block, ConvNeXtBlock, Downsample, uses_convnext_block


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    """Global average pooling, an optional norm on the pooled vector, and the classifier."""

    def __init__(self, arch: ArchSpec, width: int, num_classes: int):
        super().__init__()
        if not arch.head_norm:
            self.norm = nn.Identity()
        elif arch.norm == "layer":
            self.norm = nn.LayerNorm(width, eps=1e-6)
        else:
            self.norm = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean((2, 3))))


class RoadmapNet(nn.Module):
    """One network of the roadmap; which one is decided entirely by its ArchSpec."""

    def __init__(self, arch: ArchSpec, num_classes: int = 1000):
        super().__init__()
        self.arch = arch
        widths = arch.stage_widths()
        stem_width = arch.stem_channels()
        self.stem = STEMS[arch.stem](arch, stem_width)
        block_class = ConvNeXtBlock if uses_convnext_block(arch) else Block
        total_blocks = sum(arch.depths)
        drop_rates = [arch.drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        stages, in_width, block_index = [], stem_width, 0
        for stage_index, (depth, width) in enumerate(zip(arch.depths, widths)):
            downsample: nn.Module = nn.Identity()
            stride = 1 if stage_index == 0 else 2
            if arch.downsampling == "separate" and stage_index > 0:
                downsample, in_width, stride = Downsample(arch, in_width, width), width, 1
            blocks = []
            for i in range(depth):
                blocks.append(block_class(arch, in_width, width, stride if i == 0 else 1, drop_rates[block_index]))
                in_width, block_index = width, block_index + 1
            stages.append(Stage(downsample, blocks))
        self.stages = nn.Sequential(*stages)
        self.head = Head(arch, in_width, num_classes)
        init_weights(self, arch)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def init_weights(model: nn.Module, arch: ArchSpec) -> None:
    """Each family's reference initialization.

    BatchNorm networks as torchvision's ResNet: He (fan-out) normal convs, and the classifier left at
    nn.Linear's default (weights and bias uniform in +-1/sqrt(fan_in)). LayerNorm networks as the
    official ConvNeXt: truncated normal (std 0.02) weights and zero biases for every conv and linear.
    Norms keep weight 1, bias 0.
    """
    for module in model.modules():
        if arch.norm == "layer" and isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif arch.norm == "batch" and isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(arch: ArchSpec, num_classes: int = 1000) -> RoadmapNet:
    """The network an ArchSpec describes, with `num_classes` outputs."""
    return RoadmapNet(arch, whole_number("num_classes", num_classes, 1))
