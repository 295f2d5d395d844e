"""The plan of variants: cumulative and leave-one-out, what each variant is, its hash, and what it is compared with."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from roadmap import DataSpec, load_roadmap
from roadmap.errors import SpecError
from roadmap.recipes import CLASSIC
from roadmap.steps import DEFAULT_STEPS_DIR
from roadmap.study.planner import ScaleOverrides, StudyRequest, chain_of, plan_study, replay
from roadmap.study.presets import get_preset
from roadmap.variants import Ablation, StudyPlan

ROADMAPS = ("resnet50_to_convnext_t", "resnet200_to_convnext_b")


def plan(roadmap, ablation=Ablation.LEAVE_ONE_OUT, preset="smoke", **fields) -> StudyPlan:
    roadmap = load_roadmap(roadmap) if isinstance(roadmap, str) else roadmap
    return plan_study(StudyRequest(roadmap=roadmap, preset=get_preset(preset), data=DataSpec(), ablation=ablation,
                                   **fields))


@pytest.mark.parametrize("name", ROADMAPS)
def test_leave_one_out_plans_the_final_model_and_each_adopted_step_undone(name):
    roadmap = load_roadmap(name)
    loo = plan(roadmap)
    adopted = [step for step in roadmap.steps if step.adopted]
    assert len(adopted) == 14 and len(loo.variants) == 14  # the final model and 13 steps undone
    final = loo.variants[0]
    assert (final.name, final.baseline, final.trains) == ("separate_downsampling", None, True)
    assert [v.name for v in loo.variants[1:]] == [f"without_{step.name}" for step in adopted[1:]]
    for variant, step in zip(loo.variants[1:], adopted[1:]):
        assert (variant.baseline, variant.group, variant.step) == (final.name, step.group, step.name)
        # Nothing in the built-in roadmaps is undone by a later step: every variant is its own configuration.
        assert variant.trains and variant.identical_to is None and variant.config_hash != final.config_hash
    assert len(loo.hashes()) == 14


@pytest.mark.parametrize("name", ROADMAPS)
def test_replaying_every_step_gives_the_final_step_exactly(name):
    roadmap = load_roadmap(name)
    final = [step for step in roadmap.steps if step.adopted][-1]
    assert replay(chain_of(roadmap, final)) == (final.arch, final.recipe)


def test_without_width_96_is_convnext_t_at_c_64_throughout():
    roadmap = load_roadmap("resnet50_to_convnext_t")
    final = roadmap.step("separate_downsampling")
    arch, recipe = replay(chain_of(roadmap, final), left_out=roadmap.step("width_96"))
    assert arch == dataclasses.replace(final.arch, base_width=64) and recipe == final.recipe
    assert arch.stem_channels() == 64 and arch.stage_widths() == (64, 128, 256, 512)


def test_without_modern_recipe_is_convnext_t_under_the_classic_recipe_without_layer_scale_or_stochastic_depth():
    roadmap = load_roadmap("resnet50_to_convnext_t")
    final = roadmap.step("separate_downsampling")
    arch, recipe = replay(chain_of(roadmap, final), left_out=roadmap.step("modern_recipe"))
    assert recipe == CLASSIC
    assert arch == dataclasses.replace(final.arch, layer_scale_init=0.0, drop_path_rate=0.0)


def test_a_variant_that_is_a_step_of_the_chain_shares_its_hash_and_its_paper_numbers():
    cumulative = plan("resnet50_to_convnext_t", Ablation.CUMULATIVE)
    loo = plan("resnet50_to_convnext_t")
    without_last = loo.variant("without_separate_downsampling")
    assert without_last.config_hash == cumulative.variant("bn_to_ln").config_hash
    assert (without_last.paper.step, without_last.paper.top1) == ("bn_to_ln", 81.47)
    assert loo.variant("without_gelu").paper.step == ""  # the paper never trained it
    assert loo.variant("separate_downsampling").config_hash == cumulative.variant("separate_downsampling").config_hash


def test_upto_keeps_its_meaning_the_final_model_is_the_last_adopted_step_there():
    loo = plan("resnet50_to_convnext_t", upto="kernel_9")
    assert loo.variants[0].name == "kernel_7" and loo.upto == "kernel_9"
    assert loo.names()[-1] == "without_kernel_7"
    with pytest.raises(SpecError, match="needs at least 2 adopted steps up to 'resnet50'"):
        plan("resnet50_to_convnext_t", upto="resnet50")


def _roadmap_copy(tmp_path, files: dict[str, str], keep: tuple[str, ...] = ("00_resnet50.toml",)):
    folder = tmp_path / "roadmaps" / "mine"
    folder.mkdir(parents=True)
    for name in keep:
        shutil.copy(DEFAULT_STEPS_DIR / "resnet50_to_convnext_t" / name, folder / name)
    for name, text in files.items():
        (folder / name).write_text(text)
    return load_roadmap("mine", tmp_path / "roadmaps")


def test_a_step_that_later_steps_set_again_is_identical_and_not_trained(tmp_path):
    roadmap = _roadmap_copy(tmp_path, {
        "01_kernel_5.toml": 'name = "kernel_5"\ngroup = "k"\nadopted = true\n[arch]\nkernel_size = 5\n',
        "02_kernel_7.toml": 'name = "kernel_7"\ngroup = "k"\nadopted = true\n[arch]\nkernel_size = 7\n',
        "03_gelu.toml": 'name = "gelu"\ngroup = "m"\nadopted = true\n[arch]\nactivation = "gelu"\n',
    })
    loo = plan(roadmap, seeds=(0, 1))
    kernel_5 = loo.variant("without_kernel_5")
    assert (kernel_5.identical_to, kernel_5.trains) == ("gelu", False)
    assert kernel_5.config_hash == loo.variant("gelu").config_hash
    assert kernel_5.note == "identical to gelu: every flag it sets is set again by kernel_7"
    assert loo.variant("without_kernel_7").trains and loo.variant("without_gelu").trains
    assert [v.name for v in loo.trained()] == ["gelu", "without_kernel_7", "without_gelu"]


def test_a_combination_the_network_cannot_build_is_listed_with_its_reason(tmp_path):
    roadmap = _roadmap_copy(tmp_path, {
        "01_wide.toml": 'name = "wide"\ngroup = "w"\nadopted = true\n[arch]\nbase_width = 96\n',
        # 48 channels per group divide the hidden widths at C = 96 (96, 192, ...), not at C = 64 (64, ...).
        "02_grouped.toml": 'name = "grouped"\ngroup = "g"\nadopted = true\n[arch]\ngroup_width = 48\n',
    })
    loo = plan(roadmap, overrides=ScaleOverrides(width_multiplier=1.0))
    without_wide = loo.variant("without_wide")
    assert not without_wide.trains and without_wide.config_hash == ""
    assert without_wide.unbuildable.startswith("undoing wide gives an invalid configuration: ")
    assert "group_width=48 does not divide the hidden width 64" in without_wide.unbuildable
    assert "\n" not in without_wide.note
    assert [v.name for v in loo.trained()] == ["grouped", "without_grouped"]


def test_the_hash_covers_what_decides_the_result_and_nothing_of_how_it_runs():
    base = plan("resnet50_to_convnext_t", Ablation.CUMULATIVE).variant("kernel_7")
    assert set(base.configuration()) == {"hash_version", "arch", "recipe", "data", "precision", "batch_split"}
    assert "workers" not in base.configuration()["data"] and "download" not in base.configuration()["data"]
    for fields in ({"precision": "bf16"}, {"overrides": ScaleOverrides(epochs=3)},
                   {"overrides": ScaleOverrides(image_size=64)}, {"overrides": ScaleOverrides(width_multiplier=0.5)},
                   {"processes": 2}):
        other = plan("resnet50_to_convnext_t", Ablation.CUMULATIVE, **fields).variant("kernel_7")
        assert other.config_hash != base.config_hash, fields
    same = plan("resnet50_to_convnext_t", Ablation.CUMULATIVE, seeds=(0, 1, 2), report="best").variant("kernel_7")
    assert same.config_hash == base.config_hash


def test_the_plan_travels_as_json_and_comes_back_equal():
    loo = plan("resnet200_to_convnext_b", seeds=(0, 3))
    assert StudyPlan.from_json(loo.to_json()) == loo
    assert json.loads(loo.to_json())["ablation"] == "leave-one-out"
    with pytest.raises(SpecError, match="not a study plan of this version"):
        StudyPlan.from_json('{"variants": []}')


def test_dry_run_of_a_leave_one_out_study_lists_every_variant_with_its_baseline(cli, tmp_path):
    result = cli("--ablation", "leave-one-out", "--preset", "smoke", "--dry-run", "--json", "--seeds", "0,1",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    dry = json.loads(result.stdout)
    assert (dry["ablation"], dry["units"], len(dry["variants"])) == ("leave-one-out", 28, 14)
    assert {row["baseline"] for row in dry["variants"][1:]} == {"separate_downsampling"}
    text = cli("--ablation", "leave-one-out", "--preset", "smoke", "--dry-run", "--upto", "kernel_7", cwd=tmp_path)
    assert "leave-one-out up to kernel_7: 9 variants, 9 run(s) to train" in text.stdout
    assert "without_move_up_dwconv" in text.stdout and not (tmp_path / "mlflow.db").exists()
