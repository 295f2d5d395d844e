"""Step files: names, order, branches, deltas, and one-line errors for malformed files."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from roadmap import ArchSpec, RoadmapError, SpecError, load_roadmap
from roadmap.steps import DEFAULT_STEPS_DIR

# A copy of the project's shared paper table (Figure 2 and Table 10), so that a lone clone tests it too.
PAPER_CSV = Path(__file__).resolve().parent / "data" / "paper_resnet50_to_convnext_t.csv"
STEP_NAMES = [
    "resnet50", "modern_recipe", "stage_ratio", "patchify_stem", "depthwise_conv", "width_96", "inverted_bottleneck",
    "move_up_dwconv", "kernel_5", "kernel_7", "kernel_9", "kernel_11", "gelu", "fewer_activations", "fewer_norms",
    "bn_to_ln", "separate_downsampling",
]


def test_step_names_and_order(roadmap_t):
    assert roadmap_t.names() == STEP_NAMES
    assert [s.order for s in roadmap_t.steps] == list(range(17))


def test_explored_kernel_branches_do_not_carry_forward(roadmap_t):
    explored = [s.name for s in roadmap_t.steps if not s.adopted]
    assert explored == ["kernel_5", "kernel_9", "kernel_11"]
    for name in ("kernel_5", "kernel_7", "kernel_9", "kernel_11"):
        assert roadmap_t.step(name).parent == "move_up_dwconv"
    assert roadmap_t.step("gelu").parent == "kernel_7"
    assert roadmap_t.step("gelu").arch.kernel_size == 7
    assert roadmap_t.step("kernel_11").arch.kernel_size == 11


def test_recipes_follow_the_steps(roadmap_t):
    assert roadmap_t.step("resnet50").recipe.name == "classic"
    assert all(s.recipe.name == "modern" for s in roadmap_t.steps[1:])
    assert roadmap_t.step("modern_recipe").recipe.optimizer == "adamw"


def test_paper_numbers_equal_the_shared_table(roadmap_t):
    with PAPER_CSV.open() as handle:
        table = {row["step"]: row for row in csv.DictReader(handle)}
    assert list(table) == STEP_NAMES
    for step in roadmap_t.steps:
        row = table[step.name]
        assert step.group == row["group"]
        assert step.adopted == (row["adopted"] == "true")
        assert step.paper["top1"] == pytest.approx(float(row["table10_top1"]))
        assert step.paper["gflops"] == pytest.approx(float(row["table10_gflops"]))
        assert step.paper["fig2_top1"] == pytest.approx(float(row["fig2_top1"]))
        if row["table10_top1_std"]:
            assert step.paper["top1_std"] == pytest.approx(float(row["table10_top1_std"]))


def test_each_step_changes_only_the_flags_its_file_names(roadmap_t):
    for step in roadmap_t.steps[1:]:
        parent = roadmap_t.step(step.parent)
        changed = {k for k in ArchSpec.__dataclass_fields__ if getattr(step.arch, k) != getattr(parent.arch, k)}
        assert changed <= set(step.changes["arch"]), step.name
        assert changed, f"{step.name} changes no architecture flag"


def test_final_step_is_convnext_t(roadmap_t):
    arch = roadmap_t.step("separate_downsampling").arch
    assert (arch.depths, arch.widths, arch.kernel_size) == ((3, 3, 9, 3), (96, 192, 384, 768), 7)
    assert (arch.norm, arch.activation, arch.downsampling, arch.block) == ("layer", "gelu", "separate", "dwconv_first")


def test_second_roadmap_ends_in_convnext_b():
    roadmap = load_roadmap("resnet200_to_convnext_b")
    assert roadmap.names()[0] == "resnet200" and "width_128" in roadmap.names()
    assert roadmap.step("resnet200").arch.depths == (3, 24, 36, 3)
    stage_ratio = roadmap.step("stage_ratio").arch
    assert stage_ratio.depths == (3, 3, 27, 3) and stage_ratio.base_width == 84
    final = roadmap.step("separate_downsampling").arch
    assert (final.depths, final.widths) == ((3, 3, 27, 3), (128, 256, 512, 1024))
    assert roadmap.reference == {"name": "Swin-B", "top1": 83.5, "gflops": 15.43, "params_m": 88.0}
    assert [s.paper["top1"] for s in roadmap.steps][:3] == [78.20, 81.14, 81.33]


def test_unknown_names_list_the_valid_ones(roadmap_t):
    with pytest.raises(RoadmapError, match="valid steps: resnet50, modern_recipe"):
        roadmap_t.step("kernel_13")
    with pytest.raises(RoadmapError, match="valid roadmaps: .*resnet50_to_convnext_t"):
        load_roadmap("resnet18_to_nothing")


def _copy_roadmap(tmp_path: Path) -> Path:
    shutil.copytree(DEFAULT_STEPS_DIR / "resnet50_to_convnext_t", tmp_path / "custom")
    return tmp_path / "custom"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: "kernal_size = 3\n" + t, r"unknown key 'kernal_size'"),
        (lambda t: t.replace("kernel_size = 5", "kernel_size = 4"), r"kernel_size=4 is not valid; an odd"),
        (lambda t: t.replace("kernel_size = 5", "kernel_sise = 5"), r"\[arch\]: unknown flag 'kernel_sise'"),
        (lambda t: t.replace('group   = "large kernel"\n', ""), r"missing key 'group'"),
        (lambda t: t.replace("adopted = false", 'adopted = "no"'), r"key 'adopted' must be true or false"),
        (lambda t: t.replace('parent  = "move_up_dwconv"', 'parent  = "gelu"'), r"key 'parent' names 'gelu'"),
        (lambda t: t.replace("[arch]", "[arch\n"), r"not valid TOML"),
        (lambda t: t + '\n[recipe_overrides]\noptimiser = "sgd"\n', r"unknown flag 'optimiser'"),
    ],
)
def test_malformed_step_file_names_file_and_key(tmp_path, edit, message):
    folder = _copy_roadmap(tmp_path)
    path = folder / "08_kernel_5.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(RoadmapError, match=message) as error:
        load_roadmap("custom", tmp_path)
    assert "08_kernel_5.toml" in str(error.value) and "\n" not in str(error.value)


def test_adding_a_step_is_adding_a_file(tmp_path):
    folder = _copy_roadmap(tmp_path)
    (folder / "17_kernel_13.toml").write_text(
        'name = "kernel_13"\ngroup = "large kernel"\nadopted = false\n[arch]\nkernel_size = 13\n'
    )
    roadmap = load_roadmap("custom", tmp_path)
    step = roadmap.step("kernel_13")
    assert step.parent == "separate_downsampling" and step.arch.kernel_size == 13


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"norm": "group"}, r"norm='group' is not valid; choose one of: batch, layer"),
        ({"width_factors": (0, 1, 2, 3)}, r"width_factors=.* every value must be a whole number >= 1"),
        ({"kernel_size": 6}, r"kernel_size=6 is not valid"),
        ({"block": "fancy"}, r"block='fancy' is not valid; choose one of: bottleneck, inverted, dwconv_first"),
        ({"depths": (3, 3)}, r"must name the same stages"),
        ({"group_width": 7}, r"group_width=7 does not divide"),
    ],
)
def test_impossible_arch_fails_validation(flags, message):
    with pytest.raises(SpecError, match=message):
        ArchSpec(**flags)


def test_second_roadmap_end_points_are_the_named_reference_sizes():
    """resnet200 is timm's resnet200 and separate_downsampling is ConvNeXt-B (tests/test_sizes.py checks
    those named sizes against timm and torchvision, parameters and logits)."""
    import dataclasses

    from roadmap.models.sizes import get_size

    roadmap = load_roadmap("resnet200_to_convnext_b")
    assert roadmap.step("resnet200").arch == get_size("resnet200")
    final = roadmap.step("separate_downsampling").arch
    assert dataclasses.replace(final, drop_path_rate=0.0) == dataclasses.replace(get_size("convnext_base"),
                                                                                 drop_path_rate=0.0)
