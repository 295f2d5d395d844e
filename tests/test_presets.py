"""Presets: what each sets, how overrides win, how warm-up and milestones scale, and the errors."""
from __future__ import annotations

import dataclasses

import pytest

from roadmap.recipes import CLASSIC, MODERN
from roadmap.spec import ArchSpec, DataSpec, SpecError
from roadmap.study.presets import PRESETS, Preset, apply_preset, get_preset

ARCH, SYNTHETIC = ArchSpec(), DataSpec()


def test_the_four_presets_exist():
    assert list(PRESETS) == ["smoke", "demo", "proxy", "paper"]
    assert all(isinstance(preset, Preset) and preset.description for preset in PRESETS.values())


def test_demo_scales_the_modern_recipe():
    arch, recipe, data = apply_preset(get_preset("demo"), ARCH, MODERN, SYNTHETIC)
    demo = get_preset("demo")
    assert arch.width_multiplier == demo.width_multiplier and arch.depths == ARCH.depths
    assert (data.image_size, data.train_size, data.val_size, data.num_classes) == (
        demo.image_size, demo.train_size, demo.val_size, demo.num_classes)
    assert recipe.epochs == demo.epochs and recipe.batch_size == demo.batch_size
    # Warm-up stays 20/300 of training.
    assert recipe.warmup_epochs == pytest.approx(20 / 300 * demo.epochs)
    # A fixed peak lr, not 4e-3 x 64 / 4096.
    assert recipe.lr() == pytest.approx(demo.peak_lr["modern"])
    # Mixup and CutMix off for the short run; everything else is the recipe's own.
    assert (recipe.mixup_alpha, recipe.cutmix_alpha) == (0.0, 0.0)
    assert (recipe.optimizer, recipe.auto_augment, recipe.min_lr, recipe.weight_decay, recipe.label_smoothing) == (
        "adamw", MODERN.auto_augment, 1e-6, 0.05, 0.1)


def test_classic_milestones_stay_fractions_of_the_epochs():
    _, recipe, _ = apply_preset(get_preset("demo"), ARCH, CLASSIC, SYNTHETIC, epochs=9)
    assert recipe.epochs == 9 and recipe.lr_milestones == CLASSIC.lr_milestones
    assert [round(f * recipe.epochs) for f in recipe.lr_milestones] == [3, 6]  # StepLR(30) of 90, scaled
    assert recipe.warmup_epochs == 0 and recipe.lr() == pytest.approx(0.1 * 64 / 256)  # linear scaling kept


def test_paper_keeps_each_recipes_own_scale():
    paper = get_preset("paper")
    for base in (CLASSIC, MODERN):
        arch, recipe, data = apply_preset(paper, ARCH, base, DataSpec(source="imagefolder:/data/imagenet"))
        assert (recipe.epochs, recipe.batch_size, recipe.lr(), recipe.warmup_epochs) == (
            base.epochs, base.batch_size, base.lr(), base.warmup_epochs)
        assert arch == ARCH and data.image_size == 224
        assert data.num_classes == DataSpec().num_classes  # synthetic-only fields untouched for real data
    assert apply_preset(paper, ARCH, MODERN, SYNTHETIC)[1].lr() == pytest.approx(4e-3)


def test_proxy_uses_linear_scaling_at_batch_1024():
    _, recipe, _ = apply_preset(get_preset("proxy"), ARCH, MODERN, SYNTHETIC)
    assert recipe.batch_size == 1024 and recipe.lr() == pytest.approx(1e-3)
    assert recipe.warmup_epochs == pytest.approx(20 / 3)
    assert get_preset("proxy").micro_batch == "recipe"  # BatchNorm over the originals' per-GPU batch


def test_overrides_win_over_the_preset():
    arch, recipe, data = apply_preset(get_preset("smoke"), ARCH, MODERN, SYNTHETIC, epochs=30, batch_size=48,
                                      image_size=64, width_multiplier=0.5, lr=1e-3)
    assert arch.width_multiplier == 0.5 and data.image_size == 64
    assert recipe.epochs == 30 and recipe.batch_size == 48 and recipe.lr() == pytest.approx(1e-3)
    assert recipe.warmup_epochs == pytest.approx(2.0)  # 20/300 of 30 epochs


def test_base_lr_scale_keeps_linear_scaling():
    preset = dataclasses.replace(get_preset("proxy"), base_lr_scale={"modern": 2.0})
    _, recipe, _ = apply_preset(preset, ARCH, MODERN, SYNTHETIC)
    assert recipe.lr() == pytest.approx(2 * 4e-3 * 1024 / 4096)


def test_recipe_overrides_apply_to_their_recipe_only():
    preset = dataclasses.replace(get_preset("proxy"), recipe_overrides={"classic": {"label_smoothing": 0.1}})
    assert apply_preset(preset, ARCH, CLASSIC, SYNTHETIC)[1].label_smoothing == 0.1
    assert apply_preset(preset, ARCH, MODERN, SYNTHETIC)[1].mixup_alpha == MODERN.mixup_alpha


def test_an_unknown_recipe_override_is_named():
    preset = dataclasses.replace(get_preset("proxy"), recipe_overrides={"modern": {"mixup": 0.0}})
    with pytest.raises(SpecError, match=r"preset 'proxy' recipe_overrides\['modern'\]: unknown flag 'mixup'; did you "
                                        r"mean 'mixup_alpha'\? valid"):
        apply_preset(preset, ARCH, MODERN, SYNTHETIC)


def test_zero_epochs_is_allowed_and_has_no_warmup():
    _, recipe, _ = apply_preset(get_preset("demo"), ARCH, MODERN, SYNTHETIC, epochs=0)
    assert recipe.epochs == 0 and recipe.warmup_epochs == 0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epochs": -1}, "epochs=-1 is not valid; a whole number >= 0"),
    ({"epochs": 2.5}, "epochs=2.5 is not valid; a whole number >= 0"),
    ({"batch_size": 0}, "batch_size=0 is not valid; a whole number >= 1"),
    ({"batch_size": -8}, "batch_size=-8 is not valid; a whole number >= 1"),
    ({"image_size": 0}, "image_size=0 is not valid; a whole number >= 32"),
    ({"image_size": 16}, "image_size=16 is not valid; a whole number >= 32"),
    ({"width_multiplier": 0.0}, "width_multiplier=0.0 is not valid; a number > 0"),
    ({"lr": -0.1}, "lr=-0.1 is not valid; a number > 0"),
])
def test_bad_overrides_are_one_line_spec_errors(overrides, message):
    with pytest.raises(SpecError) as error:
        apply_preset(get_preset("demo"), ARCH, MODERN, SYNTHETIC, **overrides)
    assert str(error.value) == message


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(SpecError) as error:
        get_preset("tiny")
    assert str(error.value) == "preset='tiny' is not valid; choose one of: smoke, demo, proxy, paper"


def test_presets_are_immutable():
    with pytest.raises(TypeError):
        get_preset("demo").peak_lr["modern"] = 1.0
    with pytest.raises(TypeError):
        get_preset("demo").recipe_overrides["modern"]["mixup_alpha"] = 0.8
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("demo").epochs = 1


@pytest.mark.parametrize("step_name", ["resnet50", "separate_downsampling"])
def test_a_smoke_step_trains_end_to_end(step_name, tmp_path):
    from roadmap.data import build_datasets, build_loaders
    from roadmap.models.network import build_model
    from roadmap.steps import load_roadmap
    from roadmap.training.engine import TrainOptions, seed_everything, train_and_evaluate

    step = load_roadmap("resnet50_to_convnext_t").step(step_name)
    arch, recipe, data = apply_preset(get_preset("smoke"), step.arch, step.recipe, SYNTHETIC)
    seed_everything(0)
    model = build_model(arch, data.num_classes)
    loaders = build_loaders(build_datasets(data, recipe), recipe.batch_size, workers=0, seed=0)
    result = train_and_evaluate(model, recipe, *loaders, num_classes=data.num_classes,
                                options=TrainOptions(checkpoint_dir=tmp_path))
    assert result.status == "finished" and result.epochs_completed == 1
    assert 0 <= result.top1 <= result.top5 <= 100


def test_the_demo_evaluates_on_enough_images_for_a_one_point_top1():
    # The binomial standard error of a top-1 of p over n images is sqrt(p (1 - p) / n), largest at p = 50 %.
    assert 100 * (0.25 / get_preset("demo").val_size) ** 0.5 <= 1.0
