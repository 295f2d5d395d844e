"""State-dict exchange with torchvision's and timm's ResNet-50 and ConvNeXt-T: same logits both ways."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from helpers import PUBLISHED_PARAMS, TOLERANCE, empty, max_logit_diff, param_count, randomize_
from timm.models.resnet import Bottleneck, ResNet
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from roadmap import build_model, load_roadmap
from roadmap.interop import INTEROPS, InteropError, export_state_dict, import_state_dict
from roadmap.spec import SpecError

ROADMAP = load_roadmap("resnet50_to_convnext_t")
RESNET50 = ROADMAP.step("resnet50").arch
CONVNEXT_T = ROADMAP.step("separate_downsampling").arch

REFERENCES: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "torchvision.resnet": ("resnet50", lambda: torchvision.models.resnet50()),
    "timm.resnet": ("resnet50", lambda: timm.create_model("resnet50", pretrained=False)),
    "torchvision.convnext": ("separate_downsampling", lambda: torchvision.models.convnext_tiny()),
    "timm.convnext": ("separate_downsampling", lambda: timm.create_model("convnext_tiny", pretrained=False)),
}


def ours(step: str, num_classes: int = 1000) -> nn.Module:
    return empty(lambda: build_model(ROADMAP.step(step).arch, num_classes))


def test_step_parameter_counts_are_the_references():
    assert param_count(ours("resnet50")) == PUBLISHED_PARAMS["resnet50"]
    assert param_count(ours("separate_downsampling")) == PUBLISHED_PARAMS["convnext_tiny"]


@pytest.mark.parametrize("interop", INTEROPS)
def test_export_loads_into_the_reference_with_the_same_logits(interop: str):
    step, make_reference = REFERENCES[interop]
    model = randomize_(ours(step))
    reference = empty(make_reference)
    reference.load_state_dict(export_state_dict(model, interop), strict=True)
    assert max_logit_diff(model, reference) <= TOLERANCE


@pytest.mark.parametrize("interop", INTEROPS)
def test_import_from_the_reference_gives_the_same_logits(interop: str):
    step, make_reference = REFERENCES[interop]
    reference = randomize_(empty(make_reference), seed=1)
    model = ours(step)
    assert import_state_dict(model, reference.state_dict(), interop) is model
    assert max_logit_diff(model, reference) <= TOLERANCE


@pytest.mark.parametrize("interop", ["torchvision.resnet", "timm.convnext"])
def test_round_trip_keeps_every_tensor_and_buffer(interop: str):
    step, _ = REFERENCES[interop]
    source = randomize_(ours(step), seed=2)
    copy = import_state_dict(ours(step), export_state_dict(source, interop), interop)
    expected, got = source.state_dict(), copy.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_torchvision_keeps_layer_scale_as_c11():
    exported = export_state_dict(ours("separate_downsampling"), "torchvision.convnext")
    assert exported["features.1.0.layer_scale"].shape == (96, 1, 1)
    assert exported["features.7.2.layer_scale"].shape == (768, 1, 1)


@pytest.mark.parametrize(("interop", "block_tensor"), [
    ("torchvision.resnet", "layer3.{}.conv2.weight"),
    ("timm.convnext", "stages.2.blocks.{}.mlp.fc1.weight"),
])
def test_logit_comparison_catches_a_block_off_by_one(interop: str, block_tensor: str):
    """The check above can fail: swapping two same-shaped blocks' weights moves the logits past the tolerance."""
    step, make_reference = REFERENCES[interop]
    model = randomize_(ours(step))
    exported = dict(export_state_dict(model, interop))
    first, second = block_tensor.format(1), block_tensor.format(2)
    exported[first], exported[second] = exported[second], exported[first]
    reference = empty(make_reference)
    reference.load_state_dict(exported, strict=True)
    assert max_logit_diff(model, reference) > 100 * TOLERANCE


def test_any_depth_width_and_class_count_resnet():
    # Stages 64, 128, 256, 512 wide (hidden 16 ... 128) after timm's fixed 64-wide stem.
    arch = dataclasses.replace(RESNET50, depths=(1, 2, 1, 1), width_factors=(1, 2, 4, 8))
    model = randomize_(build_model(arch, num_classes=7))
    reference = ResNet(Bottleneck, (1, 2, 1, 1), channels=(16, 32, 64, 128), num_classes=7)
    reference.load_state_dict(export_state_dict(model, "timm.resnet"), strict=True)
    assert max_logit_diff(model, reference) <= TOLERANCE


def test_any_depth_width_and_class_count_convnext():
    arch = dataclasses.replace(CONVNEXT_T, depths=(1, 2, 1, 1), base_width=16)
    reference = ConvNeXt(
        [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 1), CNBlockConfig(128, None, 1)],
        num_classes=7,
    )
    randomize_(reference, seed=3)
    model = import_state_dict(build_model(arch, num_classes=7), reference.state_dict(), "torchvision.convnext")
    assert max_logit_diff(model, reference) <= TOLERANCE


def test_timm_convnext_without_layer_scale():
    arch = dataclasses.replace(CONVNEXT_T, depths=(1, 1, 1, 1), base_width=8,
                               layer_scale_init=0.0, kernel_size=5)
    model = randomize_(build_model(arch, num_classes=5))
    reference = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), kernel_sizes=5,
                                              ls_init_value=None, num_classes=5)
    reference.load_state_dict(export_state_dict(model, "timm.convnext"), strict=True)
    assert max_logit_diff(model, reference) <= TOLERANCE
    with pytest.raises(InteropError, match="layer_scale_init"):
        export_state_dict(model, "torchvision.convnext")


@pytest.mark.parametrize("direction", ["export", "import"])
def test_unknown_interop_string_lists_the_valid_ones(direction: str):
    model = ours("resnet50")
    with pytest.raises(SpecError) as error:
        if direction == "export":
            export_state_dict(model, "torchvision.resnext")
        else:
            import_state_dict(model, {}, "resnet50")
    message = str(error.value)
    assert "\n" not in message
    assert all(valid in message for valid in INTEROPS)


def test_step_outside_the_family_layout_is_refused():
    fits = r"does not fit torchvision\.resnet: stem='patchify' \(needs 'resnet'\)"
    with pytest.raises(SpecError, match=fits) as error:
        export_state_dict(ours("depthwise_conv"), "torchvision.resnet")
    assert "\n" not in str(error.value)
    with pytest.raises(SpecError, match="layer_scale_init=1e-06"):
        export_state_dict(ours("modern_recipe"), "timm.resnet")
    with pytest.raises(SpecError, match="norm='batch'"):
        export_state_dict(ours("resnet50"), "timm.convnext")
    with pytest.raises(SpecError, match="norm='batch'"):
        import_state_dict(ours("fewer_norms"), {}, "timm.convnext")
    with torch.device("meta"), pytest.raises(SpecError, match="model of type ResNet is not valid"):
        export_state_dict(torchvision.models.resnet50(), "torchvision.resnet")


def test_import_refuses_a_state_dict_that_does_not_fit():
    model = randomize_(ours("resnet50"))
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    ten_classes = empty(lambda: torchvision.models.resnet50(num_classes=10)).state_dict()
    with pytest.raises(InteropError, match=r"'fc\.weight' has shape \(10, 2048\).*\(1000, 2048\)"):
        import_state_dict(model, ten_classes, "torchvision.resnet")
    reference = empty(torchvision.models.resnet50).state_dict()
    with pytest.raises(InteropError, match=r"0 missing.*1 unexpected \[extra\.weight\]"):
        import_state_dict(model, reference | {"extra.weight": torch.zeros(1)}, "timm.resnet")
    with pytest.raises(InteropError, match=r"1 missing key\(s\) \[fc\.bias\]"):
        import_state_dict(model, {key: t for key, t in reference.items() if key != "fc.bias"}, "timm.resnet")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key]), f"{key} changed by a refused import"
