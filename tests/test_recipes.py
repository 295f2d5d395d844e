"""The recipes against the code that produced the paper's numbers (docs/recipes.md has the table).

Each test builds our object (schedule, optimizer, transforms, Mixup, drop-path rates, initialization) and
compares it with the values the official code computes: torchvision's references/classification/train.py
for `classic`, facebookresearch/ConvNeXt (main.py, utils.py, optim_factory.py, datasets.py,
models/convnext.py) for `modern`. The official formulas are restated here as their files write them.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats
from timm.data import transforms as timm_transforms
from timm.layers import DropPath
from torchvision import transforms

from roadmap import build_model, load_roadmap
from roadmap.data import build_transforms
from roadmap.recipes import CLASSIC, MODERN
from roadmap.training.optim import build_loss, build_optimizer, build_schedule

ROADMAP = load_roadmap("resnet50_to_convnext_t")
CONVNEXT_T = ROADMAP.step("separate_downsampling").arch


def official_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    """ConvNeXt's utils.cosine_scheduler, as written there (warmup_steps unused)."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array(
        [final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / (len(iters)))) for i in iters])
    return np.concatenate((warmup_schedule, schedule))


def lr_of_every_update(recipe, steps_per_epoch: int) -> list[float]:
    """The lr each optimizer update of a run uses, driving our schedule as the engine does."""
    optimizer = build_optimizer(torch.nn.Linear(2, 2), recipe)
    scheduler = build_schedule(optimizer, recipe, steps_per_epoch)
    used = []
    for update in range(recipe.epochs * steps_per_epoch):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step_update(num_updates=update + 1)
    return used


def test_classic_lr_at_every_update_of_90_epochs_is_torchvisions_steplr():
    steps_per_epoch = 7
    ours = lr_of_every_update(CLASSIC, steps_per_epoch)
    # torchvision: lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1), stepped once after every epoch.
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=CLASSIC.lr(), momentum=0.9)
    step_lr = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    reference = []
    for _ in range(90):
        reference += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
        optimizer.step()
        step_lr.step()
    assert ours == reference  # exactly: decays at epochs 30 and 60 only
    assert sorted(set(ours), reverse=True) == pytest.approx([0.1, 0.01, 0.001])


@pytest.mark.parametrize(("epochs", "steps_per_epoch", "warmup_epochs"), [(300, 13, 20), (4, 10, 1)])
def test_modern_lr_at_every_update_is_the_official_warmup_and_cosine(epochs, steps_per_epoch, warmup_epochs):
    recipe = dataclasses.replace(MODERN, epochs=epochs, warmup_epochs=warmup_epochs)
    ours = lr_of_every_update(recipe, steps_per_epoch)
    official = official_cosine_scheduler(recipe.lr(), recipe.min_lr, epochs, steps_per_epoch, warmup_epochs)
    assert ours == pytest.approx(list(official), abs=1e-15, rel=1e-12)
    warmup = warmup_epochs * steps_per_epoch
    assert ours[warmup - 1] == ours[warmup] == pytest.approx(4e-3)  # linspace's end point, then the cosine's start


def test_modern_optimizer_groups_are_the_official_ones():
    model = build_model(CONVNEXT_T)
    optimizer = build_optimizer(model, MODERN)
    # optim_factory.get_parameter_groups: no weight decay for 1-D parameters and biases.
    official_no_decay = {id(p) for name, p in model.named_parameters() if p.ndim == 1 or name.endswith(".bias")}
    groups = {group["weight_decay"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert set(groups) == {0.0, 0.05}
    assert groups[0.0] == official_no_decay
    assert groups[0.05] == {id(p) for p in model.parameters()} - official_no_decay
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    assert optimizer.defaults["lr"] == pytest.approx(4e-3)  # 4e-3 at 4096 images (128 per GPU x 32 GPUs)


def test_classic_optimizer_is_torchvisions():
    model = build_model(ROADMAP.step("resnet50").arch)
    optimizer = build_optimizer(model, CLASSIC)
    # train.py: SGD(parameters, lr=0.1, momentum=0.9, weight_decay=1e-4), nesterov off, decay on every parameter.
    assert isinstance(optimizer, torch.optim.SGD)
    assert (optimizer.defaults["lr"], optimizer.defaults["momentum"], optimizer.defaults["nesterov"]) == (0.1, 0.9,
                                                                                                          False)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_modern_transforms_are_the_official_build_transform():
    train, evaluation = build_transforms(MODERN, 224)
    crop, flip, augment = train.transforms[:3]
    # datasets.build_transform -> timm create_transform(224, is_training=True, color_jitter=0.4,
    # auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1).
    assert isinstance(crop, timm_transforms.RandomResizedCropAndInterpolation)
    assert (crop.size, crop.scale, crop.ratio) == ((224, 224), (0.08, 1.0), (3 / 4, 4 / 3))
    assert crop.interpolation == transforms.InterpolationMode.BICUBIC
    assert isinstance(flip, transforms.RandomHorizontalFlip) and flip.p == 0.5
    assert type(augment).__name__ == "RandAugment" and augment.num_layers == 2
    assert {(op.magnitude, op.magnitude_std, op.prob) for op in augment.ops} == {(9, 0.5, 0.5)}
    assert len(augment.ops) == 15 and "PosterizeIncreasing" in {op.name for op in augment.ops}  # inc1
    # Colour jitter is not in the list: timm drops it when auto-augment is set, as in the official runs.
    assert not any(isinstance(step, transforms.ColorJitter) for step in train.transforms)
    # Eval: Resize(int(224 / crop_pct)) with bicubic, CenterCrop(224); crop_pct = 224 / 256.
    resize, center = evaluation.transforms[:2]
    assert resize.size == 256 and resize.interpolation == transforms.InterpolationMode.BICUBIC
    assert center.size == (224, 224)


def test_classic_transforms_are_torchvisions_presets():
    train, evaluation = build_transforms(CLASSIC, 224)
    crop, flip = train.transforms[:2]
    # presets.ClassificationPresetTrain: RandomResizedCrop(224, bilinear), RandomHorizontalFlip(0.5), no jitter.
    assert (crop.size, crop.scale, crop.ratio) == ((224, 224), (0.08, 1.0), (3 / 4, 4 / 3))
    assert crop.interpolation == transforms.InterpolationMode.BILINEAR and flip.p == 0.5
    assert len(train.transforms) == 3  # crop, flip, to-tensor: no augmentation, no jitter
    # ClassificationPresetEval: Resize(256), CenterCrop(224), bilinear.
    resize, center = evaluation.transforms[:2]
    assert resize.size == 256 and center.size == (224, 224)
    assert resize.interpolation == transforms.InterpolationMode.BILINEAR


def test_mixup_arguments_are_the_official_ones():
    mixup, criterion = build_loss(MODERN, 1000)
    # main.py: Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
    # mode="batch", label_smoothing=0.1, num_classes=1000), with SoftTargetCrossEntropy.
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.cutmix_minmax, mixup.mix_prob, mixup.switch_prob) == (
        0.8, 1.0, None, 1.0, 0.5)
    assert (mixup.mode, mixup.label_smoothing, mixup.num_classes) == ("batch", 0.1, 1000)
    assert type(criterion).__name__ == "SoftTargetCrossEntropy"
    classic_mixup, classic_loss = build_loss(CLASSIC, 1000)
    assert classic_mixup is None and isinstance(classic_loss, torch.nn.CrossEntropyLoss)
    assert classic_loss.label_smoothing == 0.0  # train.py's --label-smoothing default


def test_drop_path_rates_are_the_official_linspace():
    model = build_model(CONVNEXT_T)
    rates = [module.drop_prob for module in model.modules() if isinstance(module, DropPath)]
    # models/convnext.py: dp_rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]; the
    # first block's rate is 0, so no DropPath module exists for it.
    official = [x.item() for x in torch.linspace(0, 0.1, sum(CONVNEXT_T.depths))]
    assert rates == pytest.approx(official[1:])
    assert len([m for m in model.modules() if type(m).__name__ == "ConvNeXtBlock"]) == 18


def test_convnext_init_is_the_officials_and_resnet_classifier_is_torchvisions():
    torch.manual_seed(0)
    convnext = build_model(CONVNEXT_T)
    # ConvNeXt._init_weights: trunc_normal_(std=.02) and zero bias for every Conv2d and Linear.
    assert float(convnext.head.fc.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert not convnext.head.fc.bias.any() and not convnext.stem.conv.bias.any()
    # torchvision's ResNet leaves its fc at nn.Linear's default: weight and bias uniform in +-1/sqrt(fan_in).
    for step in ("resnet50", "modern_recipe", "fewer_norms"):
        resnet = build_model(ROADMAP.step(step).arch)
        bias = resnet.head.fc.bias.detach().numpy()
        bound = 1 / math.sqrt(resnet.head.fc.in_features)
        assert np.abs(bias).max() <= bound and bias.std() > 0
        assert stats.kstest(bias, stats.uniform(loc=-bound, scale=2 * bound).cdf).pvalue > 1e-3, step
