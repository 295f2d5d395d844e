"""State-dict exchange with the reference ResNets and ConvNeXts of torchvision and timm, both directions."""
from __future__ import annotations

from typing import Any

import torch

from ..spec import ArchSpec, SpecError
from .layers import LayerScale
from .network import RoadmapNet

INTEROPS = ("torchvision.resnet", "timm.resnet", "torchvision.convnext", "timm.convnext")

# Flags that decide which tensors exist and what they compute. Sizes (depths, widths, kernel, expansion,
# groups, patch) are free: the state dict then fits the reference built with the same sizes, where the
# library can express them (torchvision hard-codes ResNet widths and ConvNeXt's 7x7 / 4x MLP; timm does not).
RESNET_LAYOUT: dict[str, Any] = {
    "stem": "resnet",
    "stem_activation": True,
    "block": "bottleneck",
    "activation": "relu",
    "activation_placement": "every_layer",
    "norm": "batch",
    "norm_placement": "every_layer",
    "downsampling": "in_block",
    "head_norm": False,
    "layer_scale_init": 0.0,
}
CONVNEXT_LAYOUT: dict[str, Any] = {
    "stem": "patchify",
    "stem_activation": False,
    "block": "dwconv_first",
    "activation": "gelu",
    "activation_placement": "single",
    "norm": "layer",
    "norm_placement": "single",
    "downsampling": "separate",
    "head_norm": True,
}

# Our tensor name -> (the reference's tensor name, the reference's shape).
KeyMap = dict[str, tuple[str, torch.Size]]


class InteropError(SpecError):
    """A model or state dict that does not fit the reference layout; the message names the misfit."""


def check_interop(interop: str) -> str:
    """`interop` itself if it is one of INTEROPS, else InteropError listing them."""
    if interop not in INTEROPS:
        raise InteropError(f"interop {interop!r} is not valid; choose one of: {', '.join(INTEROPS)}")
    return interop


def layout_misfits(arch: ArchSpec, interop: str) -> list[str]:
    """Each flag of `arch` that the reference layout of `interop` cannot hold, as 'flag=value (needs ...)'."""
    family = check_interop(interop).split(".")[1]
    required = RESNET_LAYOUT if family == "resnet" else CONVNEXT_LAYOUT
    misfits = [
        f"{flag}={getattr(arch, flag)!r} (needs {value!r})"
        for flag, value in required.items()
        if getattr(arch, flag) != value
    ]
    if family == "convnext" and arch.width_factors[0] != 1:
        # Otherwise our first block gets a projection shortcut that no reference ConvNeXt has.
        misfits.append(f"width_factors={list(arch.width_factors)} (needs 1 for the first stage: it carries C)")
    if interop == "torchvision.convnext" and not arch.layer_scale_init:
        misfits.append("layer_scale_init=0.0 (needs > 0: torchvision's blocks always have a layer scale)")
    return misfits


def check_layout(arch: ArchSpec, interop: str) -> None:
    """Raise InteropError naming every flag of `arch` that does not fit `interop`'s layout."""
    misfits = layout_misfits(arch, interop)
    if misfits:
        raise InteropError(f"this ArchSpec does not fit {interop}: {'; '.join(misfits)}")


def export_state_dict(model: RoadmapNet, target: str) -> dict[str, torch.Tensor]:
    """`model`'s weights and buffers under the names and shapes of `target`'s implementation.

    The tensors share storage with `model`, as `state_dict()` does; load them with `strict=True`.
    """
    key_map = _key_map(model, target)
    ours = model.state_dict()
    return {theirs: ours[key].reshape(shape) for key, (theirs, shape) in key_map.items()}


def import_state_dict(model: RoadmapNet, state_dict: dict[str, torch.Tensor], source: str) -> RoadmapNet:
    """Load a state dict of `source`'s implementation into `model` in place; every key must be used."""
    key_map = _key_map(model, source)
    expected = {theirs for theirs, _ in key_map.values()}
    unexpected = sorted(set(state_dict) - expected)
    missing = sorted(expected - set(state_dict))
    if unexpected or missing:
        raise InteropError(
            f"state dict does not match {source} for this model: "
            f"{len(missing)} missing key(s) {_first(missing)}, {len(unexpected)} unexpected {_first(unexpected)}"
        )
    ours = model.state_dict()
    converted = {}
    for key, (theirs, shape) in key_map.items():
        tensor = state_dict[theirs]
        if tensor.shape != shape:
            raise InteropError(
                f"{source} tensor {theirs!r} has shape {tuple(tensor.shape)}; this model needs {tuple(shape)}"
            )
        converted[key] = tensor.reshape(ours[key].shape)
    model.load_state_dict(converted, strict=True)
    return model


def _first(keys: list[str], limit: int = 3) -> str:
    return "[" + ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "") + "]"


def _key_map(model: RoadmapNet, interop: str) -> KeyMap:
    """Every tensor of `model` paired with its reference name and shape; checks the layout first."""
    check_interop(interop)
    if not isinstance(model, RoadmapNet):
        raise InteropError(f"model of type {type(model).__name__} is not valid; interop needs a RoadmapNet")
    check_layout(model.arch, interop)
    pairs = {
        "torchvision.resnet": _resnet_pairs,
        "timm.resnet": _resnet_pairs,
        "torchvision.convnext": _torchvision_convnext_pairs,
        "timm.convnext": _timm_convnext_pairs,
    }[interop](model)
    renames = dict(pairs)
    key_map: KeyMap = {}
    for key, tensor in model.state_dict().items():
        prefix = _longest_prefix(key, renames)
        if prefix is None:
            continue
        shape = tensor.shape
        if interop == "torchvision.convnext" and key.endswith("layer_scale.gamma"):
            shape = torch.Size((tensor.numel(), 1, 1))  # torchvision's layer scale is (C, 1, 1)
        key_map[key] = (renames[prefix] + key[len(prefix) :], shape)
    unmapped = [key for key in model.state_dict() if key not in key_map]
    if unmapped:
        raise InteropError(f"model tensor(s) {_first(unmapped)} have no counterpart in {interop}")
    return key_map


def _longest_prefix(key: str, renames: dict[str, str]) -> str | None:
    """The longest dotted prefix of `key` (the key itself included) that `renames` holds."""
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:cut])) in renames:
            return prefix
    return None


def _resnet_pairs(model: RoadmapNet) -> list[tuple[str, str]]:
    """(our module, reference module) prefixes; timm's ResNet uses torchvision's names."""
    pairs = [("stem.conv", "conv1"), ("stem.norm", "bn1")]
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage.blocks):
            ours, theirs = f"stages.{s}.blocks.{b}", f"layer{s + 1}.{b}"
            pairs += [(f"{ours}.convs.{k}", f"{theirs}.conv{k + 1}") for k in range(len(block.convs))]
            pairs += [(f"{ours}.norms.{k}", f"{theirs}.bn{k + 1}") for k in range(len(block.norms))]
            # The projection shortcut: 1x1 conv (index 0) + BN (index 1) in both.
            pairs.append((f"{ours}.shortcut", f"{theirs}.downsample"))
    pairs.append(("head.fc", "fc"))
    return pairs


def _timm_convnext_pairs(model: RoadmapNet) -> list[tuple[str, str]]:
    pairs = [("stem.conv", "stem.0"), ("stem.norm", "stem.1")]
    for s, stage in enumerate(model.stages):
        if s > 0:  # the first stage has no downsampling
            pairs += [(f"stages.{s}.downsample.norm", f"stages.{s}.downsample.0")]
            pairs += [(f"stages.{s}.downsample.conv", f"stages.{s}.downsample.1")]
        for b, block in enumerate(stage.blocks):
            prefix = f"stages.{s}.blocks.{b}"
            pairs += [(f"{prefix}.{name}", f"{prefix}.{name}") for name in ("conv_dw", "norm")]
            pairs += [(f"{prefix}.{name}", f"{prefix}.mlp.{name}") for name in ("fc1", "fc2")]
            if isinstance(block.layer_scale, LayerScale):
                pairs.append((f"{prefix}.layer_scale.gamma", f"{prefix}.gamma"))
    pairs += [("head.norm", "head.norm"), ("head.fc", "head.fc")]
    return pairs


def _torchvision_convnext_pairs(model: RoadmapNet) -> list[tuple[str, str]]:
    """torchvision's `features` interleaves stages and downsamplings: stem 0, stage s at 2s+1, its downsample at 2s."""
    pairs = [("stem.conv", "features.0.0"), ("stem.norm", "features.0.1")]
    for s, stage in enumerate(model.stages):
        if s > 0:  # the first stage has no downsampling
            pairs += [(f"stages.{s}.downsample.norm", f"features.{2 * s}.0")]
            pairs += [(f"stages.{s}.downsample.conv", f"features.{2 * s}.1")]
        for b in range(len(stage.blocks)):
            ours, theirs = f"stages.{s}.blocks.{b}", f"features.{2 * s + 1}.{b}"
            # block.1 and block.6 are the permutes, block.4 the GELU.
            for name, index in (("conv_dw", 0), ("norm", 2), ("fc1", 3), ("fc2", 5)):
                pairs.append((f"{ours}.{name}", f"{theirs}.block.{index}"))
            pairs.append((f"{ours}.layer_scale.gamma", f"{theirs}.layer_scale"))
    pairs += [("head.norm", "classifier.0"), ("head.fc", "classifier.2")]
    return pairs

