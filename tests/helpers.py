"""Helpers shared by the test modules: published parameter counts, weight randomization, logit comparison,
and a tiny separable task for the engine."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

# Published parameter counts at 1000 classes: torchvision's model docs; timm's model cards for
# ResNet-200 and ConvNeXt-XL (64.7 M, 350.2 M); the paper's Table 1 rounds them (29M, 50M, 89M, 198M, 350M).
PUBLISHED_PARAMS = {
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet200": 64_673_832,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "convnext_xlarge": 350_196_968,
}
TOLERANCE = 1e-4  # max abs logit difference between our network and a reference implementation


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every tensor so that each one matters: the default inits leave norms at identity and layer scales
    at 1e-6, under which a misplaced norm or block would go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.fill_(int(torch.randint(0, 1000, (), generator=generator)))  # num_batches_tracked
            elif name.endswith(("bias", "running_mean")):
                tensor.normal_(0.0, 0.1, generator=generator)
            elif tensor.dim() >= 2 and "layer_scale" not in name:  # conv / linear weights: unit gain
                tensor.normal_(0.0, tensor[0].numel() ** -0.5, generator=generator)
            else:  # norm weights, running variances, layer scales
                tensor.uniform_(0.5, 1.5, generator=generator)
    return model


def empty(factory: Callable[[], nn.Module]) -> nn.Module:
    """What `factory` builds, with uninitialized storage: skips the slow init that randomize_ or a strict load
    overwrites anyway."""
    with torch.device("meta"):
        model = factory()
    return model.to_empty(device="cpu")


def max_logit_diff(model: nn.Module, reference: nn.Module, image_size: int = 32, seed: int = 0) -> float:
    """Batch 2 at 32 px: cheap, and every tensor still feeds the logits (the 1x1 last stage sees only central taps)."""
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits, reference_logits = model.eval()(images), reference.eval()(images)
    assert logits.shape == reference_logits.shape
    assert torch.isfinite(logits).all() and logits.abs().max() > 1e-2, "logits too small to compare"
    return (logits - reference_logits).abs().max().item()


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- a tiny task for the engine

CLASSES = 4


def make_loaders(batch: int = 16, train_size: int = 64, val_size: int = 32, seed: int = 0):
    """A separable task: each class is a fixed random 3x8x8 pattern plus noise."""
    generator = torch.Generator().manual_seed(1234)
    patterns = torch.randn(CLASSES, 3, 8, 8, generator=generator)

    def split(size: int) -> TensorDataset:
        labels = torch.arange(size) % CLASSES
        return TensorDataset(patterns[labels] + 0.7 * torch.randn(size, 3, 8, 8, generator=generator), labels)

    train_set, val_set = split(train_size), split(val_size)
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(train_set, batch_size=batch, sampler=sampler, drop_last=True), DataLoader(val_set, batch_size=16)


def tiny_model(batchnorm: bool = True, dropout: float = 0.1) -> nn.Module:
    from roadmap.training.engine import seed_everything

    seed_everything(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8) if batchnorm else nn.Identity(),
        nn.ReLU(),
        nn.Dropout(dropout),  # consumes torch's RNG, as stochastic depth does
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, CLASSES),
    )


def recipe_for(base, *, epochs: int = 3, batch: int = 16, lr: float = 0.02, **changes):
    """`base` at a tiny scale with a fixed peak lr (reference_batch = batch switches linear scaling off)."""
    return dataclasses.replace(base, epochs=epochs, batch_size=batch, reference_batch=batch, base_lr=lr,
                               bn_batch=batch, **changes)


def plan_with_hashes(roadmap_name: str, seeds=(0,), report: str = "last", hash_of=lambda name: f"hash-{name}"):
    """The cumulative demo plan of a roadmap, each variant's configuration hash replaced by `hash_of(name)`: a plan
    that hand-logged runs (tagged with those hashes) belong to."""
    import dataclasses

    from roadmap import DataSpec, load_roadmap
    from roadmap.study.planner import StudyRequest, plan_study
    from roadmap.study.presets import get_preset

    plan = plan_study(StudyRequest(roadmap=load_roadmap(roadmap_name), preset=get_preset("smoke"), data=DataSpec(),
                                   seeds=tuple(seeds), report=report))
    variants = tuple(dataclasses.replace(v, config_hash=hash_of(v.name)) for v in plan.variants)
    return dataclasses.replace(plan, variants=variants)


class DivergesAfter(nn.Module):
    """The tiny model, but its training forward passes return NaN from call `calls` on."""

    def __init__(self, calls: int):
        super().__init__()
        self.inner, self.left = tiny_model(), calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.left -= 1
            if self.left < 0:
                return out * math.nan
        return out


class WrappedLoader:
    """A loader that yields another's batches, with the attributes the engine reads from a DataLoader."""

    def __init__(self, loader, num_workers: int = 0):
        self.loader, self.num_workers = loader, num_workers
        self.batch_size, self.sampler, self.generator = loader.batch_size, loader.sampler, None

    def __len__(self) -> int:
        return len(self.loader)


class SlowBatches(WrappedLoader):
    """A loader whose every batch takes `delay` seconds to arrive."""

    def __init__(self, loader, delay: float, num_workers: int = 0):
        super().__init__(loader, num_workers)
        self.delay = delay

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


class AllocatesOnce(WrappedLoader):
    """A loader that holds `mib` MiB of host memory while it yields its first batch."""

    def __init__(self, loader, mib: int):
        super().__init__(loader)
        self.mib = mib

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == 0 and self.mib:
                block = torch.ones(self.mib * 2**18)  # float32: 4 bytes each, every page touched
                del block
            yield batch
