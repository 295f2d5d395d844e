"""Batch splits: processes x accumulation x micro-batch, and the BatchNorm batch of each preset on any world size."""
from __future__ import annotations

import dataclasses

import pytest
import torch.nn.functional as F
from helpers import CLASSES, make_loaders, recipe_for
from torch import nn

from roadmap import DataSpec, load_roadmap
from roadmap.recipes import CLASSIC
from roadmap.spec import SpecError
from roadmap.study.planner import ScaleOverrides, StudyRequest, plan_study
from roadmap.study.presets import get_preset
from roadmap.training.batching import split_batch
from roadmap.training.engine import TrainOptions, train_and_evaluate

ROADMAP = load_roadmap("resnet50_to_convnext_t")


def test_split_batch_into_processes_accumulation_and_micro_batches():
    assert split_batch(256, 2, None) == split_batch(256, 2, 128)
    split = split_batch(4096, 8, 128)
    assert (split.micro_batch, split.accumulation_steps, split.world_size) == (128, 4, 8)
    assert split.effective_batch == 4096 and split.per_process == 512
    assert split.describe() == "batch 4096 (128 x 4 accumulation x 8 processes)"


@pytest.mark.parametrize(("args", "message"), [
    ((33, 2, None), "batch size 33 does not divide across 2 processes; choose a multiple of 2"),
    ((64, 1, 7), "--micro-batch) does not divide a process's share of the batch, 64"),
    ((256, 16, 32), "--micro-batch) is larger than a process's share of the batch, 16"),
    ((64, 1, 0), "micro-batch=0 is not valid; a whole number >= 1"),
])
def test_splits_that_do_not_add_up_are_one_line_errors(args, message):
    with pytest.raises(SpecError) as error:
        split_batch(*args)
    assert message in str(error.value) and "\n" not in str(error.value)


def plan(preset: str, processes: int = 1, micro_batch: int | None = None):
    return plan_study(StudyRequest(roadmap=ROADMAP, preset=get_preset(preset),
                                   data=DataSpec(source="imagefolder:/data/imagenet"), processes=processes,
                                   overrides=ScaleOverrides(micro_batch=micro_batch)))


@pytest.mark.parametrize("processes", [1, 2, 8])
def test_paper_preset_keeps_the_originals_batchnorm_batch_on_any_number_of_processes(processes):
    for variant in plan("paper", processes).variants:
        expected = 32 if variant.recipe.name == "classic" else 128
        assert variant.recipe.bn_batch == variant.micro_batch == expected, variant.name
        assert variant.processes == processes
        assert variant.micro_batch * variant.accumulation_steps * processes == variant.recipe.batch_size
        assert variant.recipe.batch_size == ROADMAP.step(variant.name).recipe.batch_size
        assert variant.configuration()["recipe"]["bn_batch"] == expected


def test_the_batchnorm_batch_is_in_the_configuration_hash():
    default, other = plan("paper").variant("resnet50"), plan("paper", micro_batch=64).variant("resnet50")
    assert other.recipe.bn_batch == 64
    assert other.config_hash != default.config_hash


def test_proxy_and_demo_state_their_batchnorm_batch():
    proxy, demo = plan("proxy"), plan("demo")
    resnet = proxy.variant("resnet50")
    assert (resnet.micro_batch, resnet.accumulation_steps, resnet.processes) == (32, 32, 1)
    assert proxy.variant("kernel_7").recipe.bn_batch == 128
    # demo and smoke: each process's whole share of the batch at once.
    assert demo.variant("resnet50").recipe.bn_batch == 64


def test_too_many_processes_for_the_batchnorm_batch_are_refused_before_training():
    with pytest.raises(SpecError, match="use at most 8 processes"):
        plan("paper", 16)


def test_batchnorm_statistics_of_every_training_forward_are_over_the_micro_batch(tmp_path):
    """A BatchNorm in training normalizes over exactly the images of one forward pass: the micro-batch."""
    seen: list[tuple[int, float]] = []
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(512, CLASSES))

    def record(module, inputs, output):
        if module.training:
            # What BatchNorm gives with the statistics of exactly this forward pass's images and no others.
            own = F.batch_norm(inputs[0], None, None, module.weight, module.bias, True, 0.0, module.eps)
            seen.append((inputs[0].shape[0], (output - own).abs().max().item()))

    model[1].register_forward_hook(record)
    recipe = dataclasses.replace(recipe_for(CLASSIC, epochs=1, batch=16), bn_batch=4)
    train_loader, val_loader = make_loaders(batch=4)
    train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=CLASSES,
                       options=TrainOptions(checkpoint_dir=tmp_path, accumulation_steps=4))
    assert [images for images, _ in seen] == [4] * (64 // 4)
    assert max(difference for _, difference in seen) < 1e-6


