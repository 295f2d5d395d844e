"""Every step's network: the paper's parameter and MAC counts, and a finite forward/backward at any size."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import PUBLISHED_PARAMS

from roadmap import arch_complexity, build_model, count_complexity, load_roadmap

ROADMAP_T = load_roadmap("resnet50_to_convnext_t")
STEP_NAMES = ROADMAP_T.names()
# Table 10 disagrees with itself on the two LayerNorm rows (see the step files' notes): a LayerNorm
# adds no MACs, so `bn_to_ln` equals `fewer_norms`, and `separate_downsampling` is ConvNeXt-T as
# timm and torchvision implement it (4.456 conv + linear GMACs).
CONVNEXT_T_GMACS = 4.4555


@pytest.mark.parametrize("name", STEP_NAMES)
def test_gmacs_match_table_10(name):
    step = ROADMAP_T.step(name)
    gmacs = arch_complexity(step.arch, 224).gmacs
    if name == "bn_to_ln":
        assert gmacs == pytest.approx(arch_complexity(ROADMAP_T.step("fewer_norms").arch).gmacs, abs=1e-9)
    elif name == "separate_downsampling":
        assert gmacs == pytest.approx(CONVNEXT_T_GMACS, abs=5e-4)
    else:
        assert gmacs == pytest.approx(step.paper["gflops"], abs=0.01)


def test_end_point_parameter_counts():
    assert arch_complexity(ROADMAP_T.step("resnet50").arch).params == PUBLISHED_PARAMS["resnet50"]
    assert arch_complexity(ROADMAP_T.step("separate_downsampling").arch).params == PUBLISHED_PARAMS["convnext_tiny"]


def test_meta_count_equals_a_real_model_and_scales_with_resolution():
    arch = ROADMAP_T.step("kernel_7").arch
    real = count_complexity(build_model(arch), (160, 96))
    meta = arch_complexity(arch, (160, 96))
    assert real == meta
    # Conv and linear MACs scale with the pixel count, up to the classifier and rounding of strides.
    assert arch_complexity(arch, 448).gmacs == pytest.approx(4 * arch_complexity(arch, 224).gmacs, rel=0.01)


@pytest.mark.parametrize("name", STEP_NAMES)
def test_forward_backward_at_several_sizes(name):
    arch = ROADMAP_T.step(name).arch
    torch.manual_seed(0)
    small = build_model(dataclasses.replace(arch, width_multiplier=0.25), num_classes=10).train()
    for size in [(32, 32), (64, 64), (224, 224), (96, 64)]:
        _assert_trains(small, size, num_classes=10)


def _assert_trains(model: torch.nn.Module, size: tuple[int, int], num_classes: int) -> None:
    model.zero_grad()
    images = torch.randn(2, 3, *size)
    logits = model(images)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_width_multiplier_shrinks_every_width():
    arch = dataclasses.replace(ROADMAP_T.step("separate_downsampling").arch, width_multiplier=0.5)
    assert arch.stage_widths() == (48, 96, 192, 384)
    assert build_model(arch).stem.conv.out_channels == 48


def test_layer_order_of_each_block_layout():
    move_up = build_model(ROADMAP_T.step("move_up_dwconv").arch)
    block = move_up.stages[1].blocks[0]
    kernel, pointwise, projection = block.convs
    # d3x3 at the input width C carries the stride; then 1x1 C -> 4C', 1x1 4C' -> C'.
    assert (kernel.in_channels, kernel.groups, kernel.stride) == (96, 96, (2, 2))
    assert (pointwise.in_channels, pointwise.out_channels, projection.out_channels) == (96, 768, 192)
    final = build_model(ROADMAP_T.step("separate_downsampling").arch)
    assert type(final.stages[0].blocks[0]).__name__ == "ConvNeXtBlock"


def test_convnext_block_computes_what_the_generic_block_computes():
    """The channels-last fast path is only a faster way of running the same flags."""
    from roadmap.models.layers import Block, ConvNeXtBlock

    arch = dataclasses.replace(ROADMAP_T.step("bn_to_ln").arch, layer_scale_init=0.5)
    torch.manual_seed(0)
    fast = ConvNeXtBlock(arch, 16, 32, stride=2, drop_path=0.0).eval()
    generic = Block(arch, 16, 32, stride=2, drop_path=0.0).eval()
    with torch.no_grad():
        generic.convs[0].load_state_dict(fast.conv_dw.state_dict())
        generic.norms[0].load_state_dict(fast.norm.state_dict())
        generic.convs[1].weight.copy_(fast.fc1.weight[:, :, None, None])
        generic.convs[1].bias.copy_(fast.fc1.bias)
        generic.convs[2].weight.copy_(fast.fc2.weight[:, :, None, None])
        generic.convs[2].bias.copy_(fast.fc2.bias)
        generic.layer_scale.load_state_dict(fast.layer_scale.state_dict())
        generic.shortcut.load_state_dict(fast.shortcut.state_dict())
        images = torch.randn(2, 16, 14, 14)
        assert torch.allclose(fast(images), generic(images), atol=1e-5)
