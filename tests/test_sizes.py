"""Named sizes: each equals its reference implementation in parameters and logits."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import PUBLISHED_PARAMS, TOLERANCE, empty, max_logit_diff, param_count, randomize_

from roadmap import build_model, load_roadmap
from roadmap.interop import export_state_dict, import_state_dict
from roadmap.models.sizes import SIZE_NAMES, get_size, model_sizes, reference_model
from roadmap.spec import ArchSpec, SpecError

# Together about a minute on 2 busy CPU cores, so they run only with -m slow.
BIG = {"resnet152", "resnet200", "convnext_large", "convnext_xlarge"}
# ResNet-50 and ConvNeXt-T are the roadmap's end points, whose logits test_interop compares both ways.
END_POINTS = {"resnet50": "resnet50", "convnext_tiny": "separate_downsampling"}
SIZES = [pytest.param(name, marks=pytest.mark.slow) if name in BIG else name
         for name in PUBLISHED_PARAMS if name not in END_POINTS]


def test_the_nine_sizes_are_named():
    assert list(model_sizes()) == list(SIZE_NAMES) == list(PUBLISHED_PARAMS)


def test_unknown_size_lists_the_valid_names():
    with pytest.raises(SpecError) as error:
        get_size("convnext_huge")
    assert "'convnext_huge'" in str(error.value) and all(name in str(error.value) for name in SIZE_NAMES)


def test_end_points_are_the_roadmaps():
    roadmap = load_roadmap("resnet50_to_convnext_t")
    for name, step in END_POINTS.items():
        assert get_size(name) == roadmap.step(step).arch, name


def test_resnets_are_the_v15_bottleneck_with_their_depths():
    depths = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3),
              "resnet200": (3, 24, 36, 3)}
    for name, blocks in depths.items():
        assert get_size(name) == ArchSpec(depths=blocks), name


def test_convnexts_take_the_roadmaps_last_step_flags():
    final = load_roadmap("resnet50_to_convnext_t").step("separate_downsampling").arch
    # Paper Section 3 (sizes) and Table 5 (stochastic depth; XL's 0.5 carries over B's and L's).
    expected = {"convnext_tiny": ((3, 3, 9, 3), 96, 0.1), "convnext_small": ((3, 3, 27, 3), 96, 0.4),
                "convnext_base": ((3, 3, 27, 3), 128, 0.5), "convnext_large": ((3, 3, 27, 3), 192, 0.5),
                "convnext_xlarge": ((3, 3, 27, 3), 256, 0.5)}
    for name, (depths, width, drop_path) in expected.items():
        changed = dict(depths=depths, base_width=width, drop_path_rate=drop_path)
        assert get_size(name) == dataclasses.replace(final, **changed), name


@pytest.mark.parametrize("name", PUBLISHED_PARAMS)
def test_parameter_count_is_the_references(name: str):
    with torch.device("meta"):
        ours = build_model(get_size(name))
        reference, _ = reference_model(name)
    assert param_count(ours) == param_count(reference) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", SIZES)
def test_logits_match_the_reference(name: str):
    ours = randomize_(empty(lambda: build_model(get_size(name))))
    with torch.device("meta"):
        reference, interop = reference_model(name)
    reference = reference.to_empty(device="cpu")
    reference.load_state_dict(export_state_dict(ours, interop), strict=True)
    assert max_logit_diff(ours, reference) <= TOLERANCE


@pytest.mark.parametrize(("name", "interop"), [("resnet101", "timm.resnet"), ("convnext_base", "timm.convnext")])
def test_timm_reference_with_any_class_count_imports_strictly(name: str, interop: str):
    with torch.device("meta"):
        reference, reference_interop = reference_model(name, "timm", num_classes=10)
    assert reference_interop == interop
    reference = randomize_(reference.to_empty(device="cpu"), seed=4)
    ours = empty(lambda: build_model(get_size(name), num_classes=10))
    import_state_dict(ours, reference.state_dict(), interop)
    exported = export_state_dict(ours, interop)
    assert exported.keys() == reference.state_dict().keys()
    assert all(torch.equal(exported[key], tensor) for key, tensor in reference.state_dict().items())


def test_default_library_is_torchvision_where_it_has_the_size():
    with torch.device("meta"):
        assert reference_model("resnet152")[1] == "torchvision.resnet"
        assert reference_model("convnext_large")[1] == "torchvision.convnext"
        assert reference_model("resnet200")[1] == "timm.resnet"
        assert reference_model("convnext_xlarge")[1] == "timm.convnext"
        assert reference_model("convnext_tiny", num_classes=10)[0].classifier[2].out_features == 10


def test_reference_errors_name_the_valid_choices():
    with pytest.raises(SpecError, match="torchvision has no 'convnext_xlarge'.*timm"):
        reference_model("convnext_xlarge", "torchvision")
    with pytest.raises(SpecError, match="library='keras' is not valid; choose one of: torchvision, timm"):
        reference_model("resnet50", "keras")
