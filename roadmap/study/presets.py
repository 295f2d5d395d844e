"""Training scales as data (smoke, demo, proxy, paper) and `apply_preset`, which folds one into the specs."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..spec import (
    MIN_IMAGE_SIZE,
    ArchSpec,
    DataSpec,
    RecipeSpec,
    choice,
    positive_number,
    replace_checked,
    whole_number,
)


@dataclass(frozen=True)
class Preset:
    """How big a study is: resolution, data size, epochs, batch, network width and learning rates.

    The recipes (classic / modern) keep their optimizer, schedule shape, augmentation and regularization;
    a preset only rescales them. Learning rates follow the recipe's linear scaling rule unless `peak_lr`
    or `base_lr_scale` names the recipe.
    """

    name: str
    description: str
    # Training and evaluation resolution (pixels, square); applies to every data source.
    image_size: int
    # Synthetic data only: images in the train and val splits, and classes.
    train_size: int
    val_size: int
    num_classes: int
    # Data-loader worker processes per training process; None: sized where the run starts, from the cores that
    # process may use (its affinity, SLURM_CPUS_PER_TASK; roadmap.data.default_workers).
    workers: int | None
    # Epochs of every step; None keeps each recipe's own (classic 90, modern 300).
    epochs: int | None
    # Effective batch (images per optimizer step over all processes and accumulation steps);
    # None keeps each recipe's own (classic 256, modern 4096).
    batch_size: int | None
    # Uniform multiplier of every network width (1 = the paper's networks).
    width_multiplier: float
    # Recipe name -> the peak lr itself, whatever the batch (linear scaling off). Wins over base_lr_scale.
    peak_lr: Mapping[str, float] = field(default_factory=dict)
    # Recipe name -> a multiplier of the recipe's base lr (linear scaling with the batch kept).
    base_lr_scale: Mapping[str, float] = field(default_factory=dict)
    # Recipe name -> RecipeSpec flags this scale changes (each one justified where the preset sets it).
    recipe_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Images per forward pass, hence per BatchNorm statistic in training. "recipe": each recipe's bn_batch,
    # the original runs' per-GPU batch (classic 32, modern 128), whatever the number of processes, the rest
    # of the batch from gradient accumulation; "process": each process's whole share of the batch at once.
    micro_batch: str = "process"
    # Suggested run settings on CUDA: autocast precision and memory format.
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        choice("micro_batch", self.micro_batch, MICRO_BATCHES)
        object.__setattr__(self, "peak_lr", MappingProxyType(dict(self.peak_lr)))
        object.__setattr__(self, "base_lr_scale", MappingProxyType(dict(self.base_lr_scale)))
        overrides = {name: MappingProxyType(dict(flags)) for name, flags in self.recipe_overrides.items()}
        object.__setattr__(self, "recipe_overrides", MappingProxyType(overrides))


MICRO_BATCHES = ("recipe", "process")

# Linear scaling from the paper's base (AdamW 4e-3 per 4096 images) gives 3e-5 at batch 32 and 6e-5 at 64:
# far too small to learn anything in a few hundred updates. A fixed peak instead, in the range small-batch
# AdamW runs use; at the demo scale 8e-3 made the LayerNorm networks stall at chance, 2e-3 did not.
MODERN_SMALL_BATCH_PEAK_LR = {"modern": 2e-3}
# Mixup and CutMix regularize 300-epoch runs; in a 200-update run they mostly slow learning down. Measured
# at the demo scale (200 updates): bn_to_ln 17 % top-1 with them, 39 % without (10 classes, chance 10 %).
# RandAugment, random erasing, label smoothing, stochastic depth and layer scale stay on.
MODERN_SHORT_RUN = {"modern": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="smoke",
            description="tests and CI: a few seconds per step on 2 CPU cores; accuracy means nothing",
            # 32 px is the smallest size every step accepts (stem /4, then three /2 downsamplings).
            image_size=32,
            train_size=128,
            val_size=64,
            num_classes=10,
            workers=0,
            epochs=1,
            batch_size=32,
            width_multiplier=0.125,
            peak_lr=MODERN_SMALL_BATCH_PEAK_LR,
            recipe_overrides=MODERN_SHORT_RUN,
        ),
        Preset(
            name="demo",
            description="the default on synthetic data: 32 px, 1/4 width, 10 classes, 4 epochs of 2,304 images, "
            "2,500 validation images (top-1 to about +-1 point); the 16 steps up to bn_to_ln in 4 to 7 minutes "
            "on 2 CPU cores",
            image_size=32,
            train_size=2304,
            # The binomial standard error of top-1 over n images is sqrt(p (1 - p) / n): at most 1.0 point with
            # 2,500 (p = 50 %), 2.2 with 500. Evaluating them costs ~0.5 s an epoch on 2 cores (~2 s a step).
            val_size=2500,
            num_classes=10,
            # On 2 cores a loader worker competes with torch's 2 threads and slows both. In the main process
            # an augmented 32 px image costs ~0.4 ms, and the steps after the first with the same recipe reuse
            # the augmented items (data.TransformedImages): data adds ~3 % to their epochs.
            workers=0,
            epochs=4,
            batch_size=64,
            width_multiplier=0.25,
            # Classic keeps linear scaling: 0.1 x 64 / 256 = 0.025.
            peak_lr=MODERN_SMALL_BATCH_PEAK_LR,
            recipe_overrides=MODERN_SHORT_RUN,
            # 1.1-1.5x faster on the CPU (oneDNN's depthwise and 1x1 kernels).
            channels_last=True,
        ),
        Preset(
            name="proxy",
            description="a one-GPU proxy study (ImageNet-100 or Imagenette as imagefolder:PATH): 160 px, "
            "100 epochs, effective batch 1024, BatchNorm over the originals' per-GPU batch (classic 32, "
            "modern 128) with accumulation for the rest, bf16; not run in CI",
            image_size=160,
            train_size=12_800,
            val_size=2_000,
            num_classes=10,
            workers=None,
            epochs=100,
            batch_size=1024,
            width_multiplier=1.0,
            # Linear scaling holds at batch 1024: classic 0.4, modern 1e-3, as the recipes say.
            micro_batch="recipe",
            precision="bf16",
            channels_last=True,
        ),
        Preset(
            name="paper",
            description="the paper's scale: ImageNet-1k (imagefolder:PATH), 224 px, each recipe's own epochs "
            "(classic 90, modern 300) and batch (256, 4096), BatchNorm over the originals' per-GPU batch "
            "(32, 128) on any number of GPUs, fp32 as the original runs (TF32 on CUDA), full width",
            image_size=224,
            train_size=12_800,
            val_size=2_000,
            num_classes=10,
            workers=None,
            epochs=None,
            batch_size=None,
            width_multiplier=1.0,
            micro_batch="recipe",
            # The original runs trained in fp32 (ConvNeXt's --use_amp and torchvision's --amp are off by
            # default); --precision bf16 trades that for speed.
            precision="fp32",
            channels_last=True,
        ),
    )
}


def get_preset(name: str) -> Preset:
    return PRESETS[choice("preset", name, tuple(PRESETS))]


def apply_preset(
    preset: Preset,
    arch: ArchSpec,
    recipe: RecipeSpec,
    data: DataSpec,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    width_multiplier: float | None = None,
    lr: float | None = None,
) -> tuple[ArchSpec, RecipeSpec, DataSpec]:
    """The specs of one step at the preset's scale; a keyword that is not None wins over the preset.

    `lr` is the peak learning rate itself (what the optimizer reaches after warm-up), at any batch.
    Warm-up stays the same fraction of training as in the recipe (modern: 20 of 300 epochs); step
    milestones are fractions of the epochs already, so they move with the epoch count by themselves.
    """
    epochs = whole_number("epochs", _or(epochs, _or(preset.epochs, recipe.epochs)), 0)
    batch = whole_number("batch_size", _or(batch_size, _or(preset.batch_size, recipe.batch_size)), 1)
    image_size = whole_number("image_size", _or(image_size, preset.image_size), MIN_IMAGE_SIZE)
    width = positive_number("width_multiplier", _or(width_multiplier, preset.width_multiplier))

    recipe = replace_checked(recipe, dict(preset.recipe_overrides.get(recipe.name, {})),
                             f"preset {preset.name!r} recipe_overrides[{recipe.name!r}]")
    warmup = recipe.warmup_epochs * epochs / recipe.epochs if recipe.epochs else 0.0
    changes = {"epochs": epochs, "batch_size": batch, "warmup_epochs": warmup}
    peak = lr if lr is not None else preset.peak_lr.get(recipe.name)
    if peak is not None:
        # reference_batch = batch turns linear scaling off: recipe.lr() is then exactly `peak`.
        changes |= {"base_lr": positive_number("lr", peak), "reference_batch": batch}
    elif recipe.name in preset.base_lr_scale:
        changes["base_lr"] = recipe.base_lr * positive_number("base_lr_scale", preset.base_lr_scale[recipe.name])

    data_changes: dict[str, object] = {"image_size": image_size}
    if data.kind == "synthetic":
        data_changes |= {"train_size": preset.train_size, "val_size": preset.val_size,
                         "num_classes": preset.num_classes}
    return (
        dataclasses.replace(arch, width_multiplier=width),
        dataclasses.replace(recipe, **changes),
        dataclasses.replace(data, **data_changes),
    )


def _or(value, default):
    return default if value is None else value

