"""Frozen specs passed explicitly through the harness: architecture, recipe, data, and their hash."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from .errors import SpecError

__all__ = ["SpecError", "ArchSpec", "RecipeSpec", "DataSpec", "whole_number", "positive_number", "choice",
           "spec_hash", "to_dict", "replace_checked", "did_you_mean"]

# Where a run trains, and at which precision ("bf16": forward passes under torch.autocast in bfloat16).
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def whole_number(name: str, value: object, minimum: int) -> int:
    """`value` if it is an int >= `minimum` (not a bool); else a one-line SpecError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{name}={value!r} is not valid; a whole number >= {minimum}")
    return value


def whole_numbers(name: str, values: tuple, minimum: int) -> tuple:
    """`values` if every one is a whole number >= `minimum`; else a one-line SpecError naming `name`."""
    try:
        for value in values:
            whole_number(name, value, minimum)
    except SpecError:
        raise SpecError(f"{name}={values} is not valid; every value must be a whole number >= {minimum}") from None
    return values


def positive_number(name: str, value: object) -> float:
    """`value` as a float if it is a finite number > 0 (not a bool); else a one-line SpecError naming `name`."""
    if not _is_number(value) or not value > 0:
        raise SpecError(f"{name}={value!r} is not valid; a number > 0")
    return float(value)


def choice(name: str, value: Any, choices: tuple) -> Any:
    """`value` if it is one of `choices`; else a one-line SpecError naming `name`, the closest choice and all."""
    if value not in choices:
        raise SpecError(f"{name}={value!r} is not valid;{did_you_mean(value, choices)} choose one of: "
                        f"{', '.join(map(str, choices))}")
    return value


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """" did you mean 'bn_to_ln'?" for the choice closest to a mistyped `value`; "" when none is close.

    Close: difflib's similarity at least 0.8 (one wrong letter in a long name), or one name beginning the other
    ("smok", "mixup"); "fp16" gets no "bf16", nor "tpu" a "cpu": those are other names, not typos.
    """
    text = str(value)
    for name in difflib.get_close_matches(text, [str(option) for option in choices], n=3, cutoff=0.6):
        if difflib.SequenceMatcher(None, text, name).ratio() >= 0.8 or name.startswith(text) or text.startswith(name):
            return f" did you mean {name!r}?"
    return ""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number_in(name: str, value: object, interval: str) -> object:
    """`value` if it is a finite number in `interval`, written "[0, 1)", "(0, 1]" or "[0, inf)"; else a SpecError."""
    low_text, high_text = (bound.strip() for bound in interval[1:-1].split(","))
    low, high = float(low_text), float(high_text)
    if _is_number(value) and (value >= low if interval[0] == "[" else value > low) and \
            (value <= high if interval[-1] == "]" else value < high):
        return value
    valid = f"{'>=' if interval[0] == '[' else '>'} {low_text}" if math.isinf(high) else f"in {interval}"
    raise SpecError(f"{name}={value!r} is not valid; a number {valid}")


_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}


def _fits(value: object, hint: Any) -> bool:
    """Whether `value` has the annotated type; a tuple field takes a list (TOML's arrays) of its item type."""
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, (tuple, list)):
            return False
        items = items[:1] * len(value) if items[-1] is Ellipsis else items
        return len(items) == len(value) and all(_fits(item, kind) for item, kind in zip(value, items))
    if hint is float:
        return _is_number(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if hint in _TYPE_NAMES else True


def _type_name(hint: Any) -> str:
    items = typing.get_args(hint)
    if typing.get_origin(hint) is not tuple:
        return _TYPE_NAMES.get(hint, str(hint))
    item = _TYPE_NAMES[items[0]].removeprefix("a ") + "s"
    return f"a list of {item}" if items[-1] is Ellipsis else f"a list of {len(items)} {item}"


_type_hints = functools.cache(typing.get_type_hints)


def check_field_types(spec: Any) -> None:
    """Every field of a spec holds its annotated type (finite numbers; lists for tuples); else a one-line SpecError."""
    hints = _type_hints(type(spec))
    for field in fields(spec):
        value = getattr(spec, field.name)
        if not _fits(value, hints[field.name]):
            shown = list(value) if isinstance(value, tuple) else value  # as a TOML array is written
            raise SpecError(f"{field.name}={shown!r} is not valid; {_type_name(hints[field.name])}")


STEMS = ("resnet", "patchify")
BLOCKS = ("bottleneck", "inverted", "dwconv_first")
ACTIVATIONS = ("relu", "gelu")
NORMS = ("batch", "layer")
PLACEMENTS = ("every_layer", "single")
DOWNSAMPLINGS = ("in_block", "separate")


@dataclass(frozen=True)
class ArchSpec:
    """Every architecture flag of the roadmap. Defaults are torchvision's ResNet-50 (v1.5)."""

    # "resnet": 7x7/2 conv + norm + act + 3x3/2 max-pool; "patchify": one PxP conv with stride P.
    stem: str = "resnet"
    # Side of the non-overlapping patches of the patchify stem (pixels).
    stem_patch_size: int = 4
    # The base width C (channels): the stem's output width and the unit of every stage width. The paper's
    # width step ("width_96") changes only this; which multiple of C a stage carries is `width_factors`.
    base_width: int = 64
    # Whether the stem ends with an activation (ResNet: yes; ConvNeXt: no).
    stem_activation: bool = True
    # Blocks per stage.
    depths: tuple[int, ...] = (3, 4, 6, 3)
    # Residual-stream channels of each stage (a block's output width) as multiples of C: ResNet's
    # bottleneck stages carry 4C, 8C, 16C, 32C; the inverted bottleneck's carry C, 2C, 4C, 8C.
    width_factors: tuple[int, ...] = (4, 8, 16, 32)
    # Layer order in a block: "bottleneck" 1x1 down, kxk, 1x1 up; "inverted" 1x1 up, kxk, 1x1 down;
    # "dwconv_first" kxk, 1x1 up, 1x1 down.
    block: str = "bottleneck"
    # Hidden width of a block as a multiple of its output width (bottleneck 1/4, inverted 4).
    expansion: float = 0.25
    # Channels per group of the kxk conv: 0 = one group (dense), 1 = depthwise, g = ResNeXt-style.
    group_width: int = 0
    # Side of the block's spatial (kxk) conv; odd so that padding k//2 keeps the size.
    kernel_size: int = 3
    activation: str = "relu"
    # "every_layer": after every layer but the last, and after the residual add (ResNet);
    # "single": one activation, right before the block's last 1x1 layer (ConvNeXt).
    activation_placement: str = "every_layer"
    # "batch": BatchNorm2d; "layer": LayerNorm over channels at each position.
    norm: str = "batch"
    # "every_layer": after every layer of a block (ResNet); "single": after the kxk conv only.
    norm_placement: str = "every_layer"
    # "in_block": stride 2 in the first block's kxk conv, 1x1/2 conv + norm shortcut (ResNet v1.5);
    # "separate": norm + 2x2/2 conv between stages (ConvNeXt).
    downsampling: str = "in_block"
    # A norm after global average pooling, before the classifier (ConvNeXt).
    head_norm: bool = False
    # Initial value of the per-channel residual scale (layer scale); 0 disables it.
    layer_scale_init: float = 0.0
    # Stochastic depth rate of the last block, rising linearly from 0 at the first.
    drop_path_rate: float = 0.0
    # Uniform multiplier of every width (stem, stages), for small-compute presets.
    width_multiplier: float = 1.0

    def __post_init__(self) -> None:
        check_field_types(self)  # the types of every flag, list items included; the ranges follow
        choice("stem", self.stem, STEMS)
        choice("block", self.block, BLOCKS)
        choice("activation", self.activation, ACTIVATIONS)
        choice("activation_placement", self.activation_placement, PLACEMENTS)
        choice("norm", self.norm, NORMS)
        choice("norm_placement", self.norm_placement, PLACEMENTS)
        choice("downsampling", self.downsampling, DOWNSAMPLINGS)
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "width_factors", tuple(self.width_factors))
        if not self.depths or len(self.depths) != len(self.width_factors):
            raise SpecError(f"depths {self.depths} and width_factors {self.width_factors} must name the same stages")
        whole_numbers("depths", self.depths, 1)
        whole_numbers("width_factors", self.width_factors, 1)
        whole_number("base_width", self.base_width, 1)
        if whole_number("kernel_size", self.kernel_size, 1) % 2 == 0:
            raise SpecError(f"kernel_size={self.kernel_size!r} is not valid; an odd whole number >= 1")
        whole_number("stem_patch_size", self.stem_patch_size, 1)
        whole_number("group_width (0 dense, 1 depthwise, g > 1 grouped)", self.group_width, 0)
        positive_number("expansion", self.expansion)
        if not 0 <= self.drop_path_rate < 1:
            raise SpecError(f"drop_path_rate={self.drop_path_rate!r} is not valid; a number in [0, 1)")
        if not self.layer_scale_init >= 0:
            raise SpecError(f"layer_scale_init={self.layer_scale_init!r} is not valid; 0 (off) or > 0")
        positive_number("width_multiplier", self.width_multiplier)
        for width in self.hidden_widths():
            if self.group_width > 1 and width % self.group_width:
                raise SpecError(f"group_width={self.group_width} does not divide the hidden width {width}")

    def scaled(self, width: int) -> int:
        """A width after the uniform multiplier, at least 1 channel."""
        return max(1, round(width * self.width_multiplier))

    @property
    def widths(self) -> tuple[int, ...]:
        """Each stage's residual width at full size: C x its factor."""
        return tuple(self.base_width * factor for factor in self.width_factors)

    def stem_channels(self) -> int:
        """The stem's output channels after the uniform multiplier."""
        return self.scaled(self.base_width)

    def stage_widths(self) -> tuple[int, ...]:
        """Each stage's residual width after the uniform multiplier."""
        return tuple(self.scaled(w) for w in self.widths)

    def hidden_widths(self) -> tuple[int, ...]:
        return tuple(max(1, round(w * self.expansion)) for w in self.stage_widths())


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
# timm's resampling filters by name (timm.data.transforms.str_to_interp_mode).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")
# The valid interval of each numeric recipe setting; whole numbers, names and lists are checked by name.
RECIPE_RANGES = {
    "base_lr": "(0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)", "warmup_epochs": "[0, inf)",
    "lr_decay": "(0, 1]", "min_lr": "[0, inf)", "color_jitter": "[0, inf)", "mixup_alpha": "[0, inf)",
    "cutmix_alpha": "[0, inf)", "mixup_switch_prob": "[0, 1]", "random_erasing": "[0, 1]",
    "label_smoothing": "[0, 1)", "eval_crop_pct": "(0, 1]", "clip_grad_norm": "[0, inf)",
}
# timm's RandAugment string (rand_augment_transform's grammar): "rand", then "-"-separated sections.
RAND_AUGMENT = ("'' (none) or 'rand' then sections m<int> (magnitude), n<int> (ops per image), mstd<number>, "
                "mmax<int>, inc<0|1>, p<number in [0, 1]>, t<weights|3a|3aw>; e.g. 'rand-m9-mstd0.5-inc1'")
_RAND_SECTION = re.compile(r"(m|n|mmax)\d+|inc[01]|mstd\d+(\.\d*)?|p(0(\.\d*)?|1(\.0*)?)|t(weights|3a|3aw)")


def rand_augment(name: str, value: str) -> str:
    """`value` if it is "" or a RandAugment string timm reads; stricter than timm, which skips what it cannot read."""
    head, *sections = value.split("-")
    if value and (head != "rand" or not all(_RAND_SECTION.fullmatch(section) for section in sections)):
        raise SpecError(f"{name}={value!r} is not valid; {RAND_AUGMENT}")
    return value


@dataclass(frozen=True)
class RecipeSpec:
    """A training recipe; learning rates are per `reference_batch` images and scale linearly."""

    name: str = "classic"
    optimizer: str = "sgd"
    # Learning rate at an effective batch of `reference_batch` images.
    base_lr: float = 0.1
    reference_batch: int = 256
    # Effective batch (images per optimizer step, all processes and accumulation together).
    batch_size: int = 256
    # Images per forward pass of one process, hence per BatchNorm statistic in training: each original
    # GPU's batch (torchvision's ResNet-50: 8 GPUs x 32; ConvNeXt's roadmap runs: 32 GPUs x 128, no SyncBN).
    # The rest of the effective batch comes from processes and gradient accumulation.
    bn_batch: int = 32
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    # Exempt norm weights and all biases from weight decay.
    no_decay_norm_and_bias: bool = False
    epochs: int = 90
    warmup_epochs: float = 0.0
    schedule: str = "step"
    # Step schedule: epochs (as fractions of `epochs`) at which the lr is multiplied by `lr_decay`.
    lr_milestones: tuple[float, ...] = (30 / 90, 60 / 90)
    lr_decay: float = 0.1
    # Cosine schedule floor.
    min_lr: float = 0.0
    # timm auto-augment string (e.g. "rand-m9-mstd0.5-inc1"); "" for none.
    auto_augment: str = ""
    color_jitter: float = 0.0
    interpolation: str = "bilinear"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_switch_prob: float = 0.5
    random_erasing: float = 0.0
    label_smoothing: float = 0.0
    # Evaluation: resize to image_size / crop_pct, then center crop image_size.
    eval_crop_pct: float = 0.875
    # Gradient-norm clipping; 0 disables.
    clip_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        check_field_types(self)
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))
        if not self.name.strip():
            raise SpecError(f"name={self.name!r} is not valid; a recipe name, e.g. classic or modern")
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("schedule", self.schedule, SCHEDULES)
        choice("interpolation", self.interpolation, INTERPOLATIONS)
        rand_augment("auto_augment", self.auto_augment)
        whole_number("epochs", self.epochs, 0)
        for name in ("reference_batch", "batch_size", "bn_batch"):
            whole_number(name, getattr(self, name), 1)
        for name, interval in RECIPE_RANGES.items():
            number_in(name, getattr(self, name), interval)
        if not all(0 <= beta < 1 for beta in self.betas):
            raise SpecError(f"betas={list(self.betas)} is not valid; two numbers in [0, 1), e.g. [0.9, 0.999]")
        milestones = self.lr_milestones
        if not all(0 < m <= 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise SpecError(f"lr_milestones={list(milestones)} is not valid; fractions of the epochs in (0, 1], "
                            "increasing, e.g. [0.333, 0.667]")

    def check_warmup(self) -> None:
        """Warm-up within training: checked where a recipe is final (step files), not in every intermediate copy."""
        if self.warmup_epochs > self.epochs:
            raise SpecError(f"warmup_epochs={self.warmup_epochs!r} is not valid with epochs={self.epochs}; "
                            "a number in [0, epochs]")

    def lr(self) -> float:
        """The peak learning rate at this recipe's effective batch (linear scaling rule)."""
        return self.base_lr * self.batch_size / self.reference_batch


DATA_KINDS = ("synthetic", "imagefolder", "cifar10", "cifar100")


# The smallest resolution every roadmap network takes: each halves it five times (stem /4, three /2).
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class DataSpec:
    """Which images a run sees and at what resolution (how they are loaded is a run setting: never here)."""

    # "synthetic" (built in), "imagefolder:PATH", "cifar10:PATH" or "cifar100:PATH".
    source: str = "synthetic"
    # Training and evaluation resolution (pixels, square).
    image_size: int = 224
    # Synthetic data only: classes, images per split, and the seed that generates them.
    num_classes: int = 10
    train_size: int = 5000
    val_size: int = 1000
    generation_seed: int = 0
    # Imagefolder data read from the image cache (--data-cache DIR), its training images stored resized (aspect
    # kept) to this short side (pixels) before RandomResizedCrop: other pixels than the files' own, hence part of
    # what a run is. 0: decoded from the files at every epoch. See roadmap.data.cache.
    cache_short_side: int = 0

    def __post_init__(self) -> None:
        choice("data kind", self.kind, DATA_KINDS)
        if self.kind == "synthetic" and self.path:
            raise SpecError(f"data={self.source!r} is not valid; synthetic data takes no path")
        if self.kind != "synthetic" and not self.path:
            raise SpecError(f"data={self.source!r} is not valid; write {self.kind}:PATH")
        for name in ("image_size", "num_classes", "train_size", "val_size"):
            whole_number(name, getattr(self, name), 1)
        if self.kind == "synthetic" and self.num_classes < 2:
            raise SpecError(f"num_classes={self.num_classes} is not valid; synthetic data needs >= 2 classes")
        whole_number("cache_short_side", self.cache_short_side, 0)
        if self.cache_short_side and self.kind != "imagefolder":
            raise SpecError(f"an image cache (--data-cache) is for imagefolder data, not data={self.source!r}")
        if 0 < self.cache_short_side < self.image_size:
            raise SpecError(f"cache_short_side={self.cache_short_side} is smaller than image_size={self.image_size}; "
                            f"choose 0 (no cache) or >= {self.image_size}")

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def path(self) -> str:
        return self.source.split(":", 1)[1] if ":" in self.source else ""


# Flags of earlier versions -> what replaced them (step files written for those versions get this hint).
RENAMED_FLAGS = {
    "stem_width": "write base_width = C (the stem's width and the unit of every stage width)",
    "widths": "write width_factors = stage widths as multiples of base_width C (ResNet: [4, 8, 16, 32])",
}


def replace_checked(spec: Any, overrides: dict[str, Any], where: str) -> Any:
    """`dataclasses.replace`, but an unknown key names `where` and the valid keys."""
    valid = {f.name for f in fields(spec)}
    for key in overrides:
        if key in RENAMED_FLAGS and key not in valid:
            raise SpecError(f"{where}: flag {key!r} was replaced; {RENAMED_FLAGS[key]}")
        if key not in valid:
            raise SpecError(f"{where}: unknown flag {key!r};{did_you_mean(key, valid)} valid flags: "
                            f"{', '.join(sorted(valid))}")
    return dataclasses.replace(spec, **overrides)


def to_dict(spec: Any) -> dict[str, Any]:
    return {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(spec).items()}


def spec_hash(*specs: Any) -> str:
    """A stable short hash of one or more specs (dataclasses or plain dicts)."""
    payload = [to_dict(s) if dataclasses.is_dataclass(s) else s for s in specs]
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
