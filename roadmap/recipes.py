"""The two training recipes of the study, as data (see shared paper notes, 'Recipes')."""
from __future__ import annotations

from .spec import RecipeSpec, choice

# torchvision's ResNet-50 reference recipe (step `resnet50`).
CLASSIC = RecipeSpec(
    name="classic",
    optimizer="sgd",
    base_lr=0.1,  # per 256 images
    reference_batch=256,
    batch_size=256,
    bn_batch=32,  # 8 GPUs x 32 images: each BatchNorm saw 32
    momentum=0.9,
    weight_decay=1e-4,
    epochs=90,
    schedule="step",
    # torchvision's StepLR(step_size=30, gamma=0.1), stepped once per epoch: x0.1 at epochs 30 and 60 of 90.
    lr_milestones=(30 / 90, 60 / 90),
    lr_decay=0.1,
    interpolation="bilinear",
    eval_crop_pct=224 / 256,
)

# The paper's Table 5, ImageNet-1K column, EMA off (Appendix A.1), from step `modern_recipe` on.
# Stochastic depth and layer scale are model flags (ArchSpec), set by the `modern_recipe` step.
MODERN = RecipeSpec(
    name="modern",
    optimizer="adamw",
    base_lr=4e-3,  # per 4096 images
    reference_batch=4096,
    batch_size=4096,
    bn_batch=128,  # 4 nodes x 8 GPUs x 128 images, no SyncBN: each BatchNorm saw 128
    betas=(0.9, 0.999),
    weight_decay=0.05,
    no_decay_norm_and_bias=True,
    epochs=300,
    warmup_epochs=20,
    schedule="cosine",
    min_lr=1e-6,
    auto_augment="rand-m9-mstd0.5-inc1",
    color_jitter=0.4,
    interpolation="bicubic",
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    mixup_switch_prob=0.5,
    random_erasing=0.25,
    label_smoothing=0.1,
    eval_crop_pct=224 / 256,
)

RECIPES = {recipe.name: recipe for recipe in (CLASSIC, MODERN)}


def get_recipe(name: str) -> RecipeSpec:
    return RECIPES[choice("recipe", name, tuple(RECIPES))]
