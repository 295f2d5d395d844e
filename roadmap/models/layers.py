"""Building blocks looked up by flag: norms, activations, stems, residual blocks, downsampling."""
from __future__ import annotations

import torch
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, NormMlpClassifierHead
from torch import nn

from ..spec import ArchSpec

ACTIVATION_LAYERS = {"relu": nn.ReLU, "gelu": nn.GELU}
# In place where the layer can be (torchvision's ResNet does the same): every activation here follows a
# conv, norm, linear or sum whose backward does not need its output, so overwriting it saves a tensor.
ACTIVATION_IN_PLACE = {"relu": True, "gelu": False}
# Channels-first norms for NCHW tensors; LayerNorm2d normalizes over C at each (h, w).
NORM_LAYERS = {"batch": nn.BatchNorm2d, "layer": LayerNorm2d}


def make_norm(kind: str, channels: int) -> nn.Module:
    return NORM_LAYERS[kind](channels)


def make_activation(kind: str) -> nn.Module:
    return ACTIVATION_LAYERS[kind](inplace=True) if ACTIVATION_IN_PLACE[kind] else ACTIVATION_LAYERS[kind]()


def conv(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, *, before_batch_norm: bool
) -> nn.Conv2d:
    """A 'same'-padded conv; its bias is dropped when a BatchNorm follows (the BN bias replaces it)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=not before_batch_norm)


def spatial_groups(arch: ArchSpec, channels: int) -> int:
    if arch.group_width == 0:
        return 1
    return channels // arch.group_width


def stem_reduction(arch: ArchSpec) -> int:
    """Input pixels per stem output pixel, along each side: 4 for the ResNet stem, P for a PxP patchify stem."""
    return 4 if arch.stem == "resnet" else arch.stem_patch_size


class ResNetStem(nn.Module):
    """7x7/2 conv, norm, activation, 3x3/2 max-pool: a 4x reduction with overlapping windows."""

    def __init__(self, arch: ArchSpec, width: int, in_chans: int = 3):
        super().__init__()
        self.reduction = stem_reduction(arch)
        self.conv = conv(in_chans, width, 7, 2, before_batch_norm=arch.norm == "batch")
        self.norm = make_norm(arch.norm, width)
        self.act = make_activation(arch.activation) if arch.stem_activation else nn.Identity()
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class PatchifyStem(nn.Module):
    """One PxP conv with stride P (non-overlapping patches), then norm and optional activation."""

    def __init__(self, arch: ArchSpec, width: int, in_chans: int = 3):
        super().__init__()
        patch = arch.stem_patch_size
        self.reduction = stem_reduction(arch)
        self.conv = nn.Conv2d(in_chans, width, patch, patch, bias=arch.norm != "batch")
        self.norm = make_norm(arch.norm, width)
        self.act = make_activation(arch.activation) if arch.stem_activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


STEMS = {"resnet": ResNetStem, "patchify": PatchifyStem}


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (CaiT / ConvNeXt), on NCHW or NHWC tensors."""

    def __init__(self, channels: int, init: float, channels_last: bool):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.gamma if self.channels_last else self.gamma.view(-1, 1, 1))


def make_layer_scale(arch: ArchSpec, channels: int, channels_last: bool) -> nn.Module:
    if not arch.layer_scale_init:
        return nn.Identity()
    return LayerScale(channels, arch.layer_scale_init, channels_last)


def projection_shortcut(arch: ArchSpec, in_width: int, out_width: int, stride: int) -> nn.Module:
    """Identity, or ResNet v1.5's 1x1 conv with the block's stride followed by a norm."""
    if in_width == out_width and stride == 1:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_width, out_width, 1, stride, bias=arch.norm != "batch"),
        make_norm(arch.norm, out_width),
    )


class Block(nn.Module):
    """A residual block of three layers in any layout, norm and activation placement (NCHW).

    Layer order by `arch.block`: bottleneck (1x1, kxk, 1x1), inverted (1x1, kxk, 1x1 with a wide
    middle), dwconv_first (kxk, 1x1, 1x1). The kxk layer carries the stride; the hidden width is
    `expansion` times the output width; the first layer takes the input width.
    """

    def __init__(self, arch: ArchSpec, in_width: int, out_width: int, stride: int, drop_path: float):
        super().__init__()
        hidden = max(1, round(out_width * arch.expansion))
        k = arch.kernel_size
        if arch.block == "dwconv_first":
            shapes = [(in_width, in_width, k, stride), (in_width, hidden, 1, 1), (hidden, out_width, 1, 1)]
            spatial_index = 0
        else:
            shapes = [(in_width, hidden, 1, 1), (hidden, hidden, k, stride), (hidden, out_width, 1, 1)]
            spatial_index = 1
        self.convs, self.norms, self.acts = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for index, (c_in, c_out, kernel, layer_stride) in enumerate(shapes):
            has_norm = arch.norm_placement == "every_layer" or index == spatial_index
            groups = spatial_groups(arch, c_in) if index == spatial_index else 1
            before_bn = has_norm and arch.norm == "batch"
            self.convs.append(conv(c_in, c_out, kernel, layer_stride, groups, before_batch_norm=before_bn))
            self.norms.append(make_norm(arch.norm, c_out) if has_norm else nn.Identity())
            # "single" keeps only the activation right before the last layer.
            has_act = index == 1 or (index == 0 and arch.activation_placement == "every_layer")
            self.acts.append(make_activation(arch.activation) if has_act else nn.Identity())
        self.layer_scale = make_layer_scale(arch, out_width, channels_last=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcut = projection_shortcut(arch, in_width, out_width, stride)
        self.act_after_add = (
            make_activation(arch.activation) if arch.activation_placement == "every_layer" else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = x
        for conv_layer, norm, act in zip(self.convs, self.norms, self.acts):
            branch = act(norm(conv_layer(branch)))
        branch = self.drop_path(self.layer_scale(branch))
        branch += self.shortcut(x)  # in place, as torchvision's Bottleneck: no backward here needs the branch
        return self.act_after_add(branch)


class ConvNeXtBlock(nn.Module):
    """dwconv_first with one LayerNorm and one activation, run as the official code runs it.

    Computes exactly what `Block` computes for those flags, but the norm and the two 1x1 layers
    run as LayerNorm + Linear on a channels-last (N, H, W, C) view, which is faster in PyTorch
    than LayerNorm2d + 1x1 convs (ConvNeXt official repo, issues #18 and #83).
    """

    def __init__(self, arch: ArchSpec, in_width: int, out_width: int, stride: int, drop_path: float):
        super().__init__()
        hidden = max(1, round(out_width * arch.expansion))
        k = arch.kernel_size
        groups = spatial_groups(arch, in_width)
        self.conv_dw = nn.Conv2d(in_width, in_width, k, stride, padding=k // 2, groups=groups)
        self.norm = nn.LayerNorm(in_width, eps=1e-6)
        self.fc1 = nn.Linear(in_width, hidden)
        self.act = make_activation(arch.activation)
        self.fc2 = nn.Linear(hidden, out_width)
        self.layer_scale = make_layer_scale(arch, out_width, channels_last=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcut = projection_shortcut(arch, in_width, out_width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv_dw(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        branch = self.layer_scale(self.fc2(self.act(self.fc1(self.norm(branch)))))
        branch = branch.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return self.shortcut(x) + self.drop_path(branch)


def uses_convnext_block(arch: ArchSpec) -> bool:
    return (
        arch.block == "dwconv_first"
        and arch.norm == "layer"
        and arch.norm_placement == "single"
        and arch.activation_placement == "single"
    )


class Downsample(nn.Module):
    """Separate downsampling between stages: norm, then a 2x2 conv with stride 2."""

    def __init__(self, arch: ArchSpec, in_width: int, out_width: int):
        super().__init__()
        self.norm = make_norm(arch.norm, in_width)
        self.conv = nn.Conv2d(in_width, out_width, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def make_head(arch: ArchSpec, width: int, num_classes: int, pool_type: str = "avg",
              drop_rate: float = 0.0) -> nn.Module:
    """timm's classifier heads: global pooling, the optional norm (head_norm), dropout, the classifier.

    `pool_type` is timm's ("avg", "max", ..., "" for none); `num_classes` 0 leaves the pooled features.
    Their tensors are head.norm.* and head.fc.*, as in timm's ConvNeXt; the norm of the pooled (N, C, 1, 1)
    map computes what a LayerNorm / BatchNorm1d of the pooled vector does.
    """
    if arch.head_norm:
        return NormMlpClassifierHead(width, num_classes, pool_type=pool_type, drop_rate=drop_rate,
                                     norm_layer=NORM_LAYERS[arch.norm])
    return ClassifierHead(width, num_classes, pool_type=pool_type, drop_rate=drop_rate)
