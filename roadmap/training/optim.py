"""A recipe's optimizer, learning-rate schedule and loss, built from timm's components."""
from __future__ import annotations

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

from ..spec import RecipeSpec


def mixup_enabled(recipe: RecipeSpec) -> bool:
    return recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0


def build_optimizer(model: nn.Module, recipe: RecipeSpec) -> torch.optim.Optimizer:
    """SGD with classical momentum or AdamW at the recipe's peak lr; norms and biases decay-free when asked.

    Build it after the model is on its device: it uses torch's fused kernels (one per step instead of a
    few per parameter; AdamW steps 6x faster on the CPU), which exist for CPU and CUDA parameters.
    """
    common = dict(lr=recipe.lr(), weight_decay=recipe.weight_decay, filter_bias_and_bn=recipe.no_decay_norm_and_bias,
                  fused=True)
    if recipe.optimizer == "sgd":
        # timm's "sgd" is Nesterov; torchvision's ResNet reference uses classical momentum.
        return create_optimizer_v2(model, opt="momentum", momentum=recipe.momentum, **common)
    return create_optimizer_v2(model, opt="adamw", betas=recipe.betas, **common)


def build_schedule(optimizer: torch.optim.Optimizer, recipe: RecipeSpec, steps_per_epoch: int) -> Scheduler:
    """Per-update lr: linear warm-up from 0, then step decay (classic) or cosine to min_lr (modern).

    The engine calls `step_update(num_updates=k)` after the k-th optimizer update, so update k + 1 runs at
    the lr timm gives for t = k (update 1 at the lr set at construction, t = 0).
    """
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = min(round(recipe.warmup_epochs * steps_per_epoch), total - 1)
    if recipe.schedule == "cosine":
        if warmup >= 2:
            return OfficialWarmupCosine(optimizer, total=total, warmup=warmup, min_lr=recipe.min_lr)
        return CosineLRScheduler(optimizer, t_initial=total - warmup, lr_min=recipe.min_lr, warmup_t=warmup,
                                 warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    # timm's MultiStepLR applies milestone m from t = m - 1 on (it bisects t + 1). With m = e x steps_per_epoch
    # + 1 for milestone epoch e, the first update of epoch e (t = e x steps_per_epoch) is the first at the
    # lower lr: exactly torchvision's StepLR stepped once per epoch (tests/test_recipes.py checks every update).
    milestones = [round(fraction * total) + 1 for fraction in recipe.lr_milestones]
    return MultiStepLRScheduler(
        optimizer, decay_t=milestones, decay_rate=recipe.lr_decay, warmup_t=warmup, warmup_lr_init=0.0,
        warmup_prefix=False, t_in_epochs=False,
    )


class OfficialWarmupCosine(CosineLRScheduler):
    """timm's linear warm-up and cosine, on the official ConvNeXt schedule's clock (utils.cosine_scheduler).

    The official warm-up is np.linspace(0, peak, W): update W - 1 already reaches the peak, and the cosine
    then starts at the peak again at update W. timm's warm-up of W - 1 updates gives the first part exactly;
    the cosine part needs timm's t one behind the update count from update W on. Every update's lr then
    equals the official one (tests/test_recipes.py compares all of them).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total: int, warmup: int, min_lr: float):
        super().__init__(optimizer, t_initial=total - warmup, lr_min=min_lr, warmup_t=warmup - 1, warmup_lr_init=0.0,
                         warmup_prefix=True, t_in_epochs=False)
        self.warmup_updates = warmup

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        held = num_updates if num_updates < self.warmup_updates else num_updates - 1
        super().step_update(held, metric)


def build_loss(recipe: RecipeSpec, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """timm Mixup/CutMix with soft-target cross-entropy when either is on; else (label-smoothed) cross-entropy."""
    if mixup_enabled(recipe):
        mixup = Mixup(
            mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, switch_prob=recipe.mixup_switch_prob,
            mode="batch", label_smoothing=recipe.label_smoothing, num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if recipe.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return None, nn.CrossEntropyLoss()
