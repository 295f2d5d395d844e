"""`build_model(arch)`: stem, stages of residual blocks, pooled head, for any valid ArchSpec; timm's model API."""
# No `from __future__ import annotations` here: torch.fx copies RoadmapNet.forward's annotations into the code
# it generates, and TorchScript cannot read them as strings (timm's test of fx then torch.jit.script).
import contextlib
from typing import Any

import torch
from timm.layers import get_device_dtype
from torch import nn

from ..spec import ArchSpec, whole_number
from .layers import STEMS, Block, ConvNeXtBlock, Downsample, make_head, stem_reduction, uses_convnext_block


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class RoadmapNet(nn.Module):
    """One network of the roadmap; which one is decided entirely by its ArchSpec.

    It keeps timm's model contract (forward_features / forward_head, reset_classifier, get_classifier,
    num_features, head_hidden_size, feature_info), so `roadmap.timm_models` registers it with timm as is.

    Args:
        arch: the architecture.
        num_classes: classifier outputs; 0 for none (the model then returns pooled features).
        in_chans: input image channels.
        global_pool: timm's global pooling type ("avg", "max", ...; "" keeps the feature map).
        drop_rate: dropout before the classifier.
        device, dtype: where and in which precision the tensors are created (timm's factory passes them).
    """

    def __init__(self, arch: ArchSpec, num_classes: int = 1000, *, in_chans: int = 3, global_pool: str = "avg",
                 drop_rate: float = 0.0, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.arch = arch
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build(arch, num_classes, in_chans, global_pool, drop_rate)
        if not self.stem.conv.weight.is_meta:  # shapes only: there are no values to draw (and meta draws are slow)
            init_weights(self, arch)
        if dtype is not None:
            self.to(dtype=dtype)

    def _build(self, arch: ArchSpec, num_classes: int, in_chans: int, global_pool: str, drop_rate: float) -> None:
        widths = arch.stage_widths()
        stem_width = arch.stem_channels()
        self.stem = STEMS[arch.stem](arch, stem_width, in_chans)
        block_class = ConvNeXtBlock if uses_convnext_block(arch) else Block
        total_blocks = sum(arch.depths)
        drop_rates = [arch.drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        stages, in_width, block_index, reduction = [], stem_width, 0, self.stem.reduction
        self.feature_info: list[dict[str, Any]] = []
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
            reduction *= 1 if stage_index == 0 else 2
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{stage_index}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_width
        self.head = make_head(arch, in_width, num_classes, global_pool, drop_rate)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier with `num_classes` outputs (0: none); `global_pool` None keeps the pooling."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (N, num_features, H / 32, W / 32 for a 4x stem), before any pooling."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling, head norm and classifier; `pre_logits` stops before the classifier."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def output_side(arch: ArchSpec, image_side: int) -> int:
    """The side of forward_features' map for a square image: what timm's pretrained cfg calls pool_size."""
    side = _halved(_halved(image_side)) if arch.stem == "resnet" else image_side // arch.stem_patch_size
    for _ in arch.depths[1:]:
        side = side // 2 if arch.downsampling == "separate" else _halved(side)
    return side


def min_input_side(arch: ArchSpec) -> int:
    """The side of the smallest square image the network takes whole: its total reduction (32 for a 4x stem)."""
    return stem_reduction(arch) * 2 ** (len(arch.depths) - 1)


def _halved(side: int) -> int:
    """The side after a stride-2 layer padded as 'same' (the 7x7 stem conv, the 3x3 max-pool, a kxk conv)."""
    return (side - 1) // 2 + 1


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
