"""Data sets (synthetic, ImageFolder, CIFAR) from a DataSpec, with a recipe's transforms built by timm.

Items are uint8 CHW tensors, as timm's fast path makes them: normalization and random erasing happen on
whole batches, on the training device (`roadmap.data.loaders.DeviceBatches`).
"""
from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from timm.data import auto_augment, create_transform
from torch.utils.data import Dataset, get_worker_info
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from ..schema import DatasetRecord
from ..spec import DataSpec, RecipeSpec
from . import synthetic
from .augment import ArrayTransform
from .cache import StoredSize, load_rgb, open_store
from .checks import (
    CIFAR_SOURCES,
    SPLIT_FOLDERS,
    DataError,
    check_cache,
    check_cifar,
    check_imagefolder,
    check_synthetic,
    cifar_root,
)
from .seeding import saved_generators, seed_generators

# Transformed items a split keeps in the training process (see TransformedImages): the demo's whole study
# (2,304 + 500 images of 32 px, 4 epochs) takes 30 MB of it.
KEEP_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Datasets:
    """Both splits, ready for a DataLoader: items are (uint8 CHW tensor, int label)."""

    train: TransformedImages
    val: TransformedImages
    num_classes: int
    class_names: tuple[str, ...]
    # A short human label, e.g. "synthetic (10 classes, 5000/1000 images, 32 px)".
    description: str
    # The DataSpec kind ("synthetic", "imagefolder", "cifar10", "cifar100").
    kind: str
    # The recipe's random-erasing probability, applied to normalized train batches by DeviceBatches.
    random_erasing: float = 0.0
    # What a run records about each split (name, digest, source, shape): training first, then validation.
    records: tuple[DatasetRecord, ...] = ()



class _LocalCIFAR:
    """Mixin for torchvision's CIFAR classes that checks local files exist instead of their MD5.

    torchvision compares every file with the official MD5 (hashing 180 MB at each start) and rejects
    anything else, which rules out the tiny on-disk copies the tests write; validate_data unpickles the
    files instead. A download (download=True) still verifies the archive's MD5.
    """

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all((folder / name).is_file() for name in names)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as file:
            self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


class LocalCIFAR10(_LocalCIFAR, CIFAR10):
    pass


class LocalCIFAR100(_LocalCIFAR, CIFAR100):
    pass


# kind -> our local-copy class
_LOCAL_CIFAR = {"cifar10": LocalCIFAR10, "cifar100": LocalCIFAR100}


class TransformedImages(Dataset):
    """A split of (PIL image, label) items with a transform applied: (uint8 CHW tensor, int label).

    A key is an index, or (index, sample_seed) from SeededDistributedSampler: then the transform's
    random draws (Python `random`, NumPy's and torch's global generators, all used by timm's
    augmentations) come from `sample_seed`, and the caller's generator states are restored afterwards.

    In the training process itself (no loader workers), transformed items are kept, up to `keep_bytes`,
    under what decides them: (index, sample_seed), or the index when the transform is `deterministic`.
    The steps of a study that share data and recipe see the same items in every epoch (the seeds are a
    function of seed, epoch and index), so only the first of them pays for the augmentations.
    """

    def __init__(self, images: Dataset, transform: Callable, *, deterministic: bool, keep_bytes: int = KEEP_BYTES):
        self.images, self.transform, self.deterministic = images, transform, deterministic
        self.keep_bytes, self.kept_bytes = keep_bytes, 0
        self._kept: dict[int | tuple[int, int], tuple[torch.Tensor, int]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[int | tuple[int, int]]) -> list[tuple[torch.Tensor, int]]:
        """A batch of items (the DataLoader's batched fetch): the generators are saved once per batch."""
        items = [self._kept.get(key) if self._keeps(key) else None for key in keys]
        missing = [position for position, item in enumerate(items) if item is None]
        if not missing:
            return items
        with saved_generators():
            for position in missing:
                items[position] = self._transform(keys[position])
        return items

    def _keeps(self, key: int | tuple[int, int]) -> bool:
        return isinstance(key, tuple) or self.deterministic

    def _transform(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.images[index]
        if sample_seed is not None:
            seed_generators(sample_seed)
        item = self.transform(image), int(label)
        if self._keeps(key) and get_worker_info() is None and self.kept_bytes + item[0].nbytes <= self.keep_bytes:
            self._kept[key] = item
            self.kept_bytes += item[0].nbytes
        return item



def build_transforms(recipe: RecipeSpec, image_size: int) -> tuple[Callable, Callable]:
    """(train, eval) transforms of a recipe via timm: RandomResizedCrop + flip + augmentations; resize + crop.

    Both end in uint8 CHW tensors (timm's `use_prefetcher` form); DeviceBatches normalizes and erases.
    """
    train = create_transform(
        image_size,
        is_training=True,
        use_prefetcher=True,
        auto_augment=recipe.auto_augment or None,
        # timm ignores colour jitter when auto_augment is set, as the official ConvNeXt runs did.
        color_jitter=recipe.color_jitter or None,
        interpolation=recipe.interpolation,
    )
    _replace_augment_ops(train)
    evaluation = create_transform(
        image_size,
        is_training=False,
        use_prefetcher=True,
        interpolation=recipe.interpolation,
        crop_pct=recipe.eval_crop_pct,
    )
    return train, evaluation


def _posterize(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits giving a black image as the Pillow of the paper's days did."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return auto_augment.posterize(image, bits_to_keep)


def _replace_augment_ops(transform: Callable) -> None:
    """Posterize that allows 0 bits; shears and translations compiled when numba is installed (same pixels)."""
    from . import affine  # imports numba (half a second): only where transforms are built

    compiled = {getattr(auto_augment, name): affine.compiled_op(name) for name in affine.GEOMETRIC_OPS} \
        if affine.numba is not None else {}
    for step in transform.transforms:
        ops = list(getattr(step, "ops", [])) + [op for ops in getattr(step, "policy", []) for op in ops]
        for op in ops:
            # timm's "PosterizeIncreasing" keeps 0 bits at magnitude 10, which rand-m9-mstd0.5 reaches ~2% of
            # the time; recent Pillow raises "bits must be between or equal to 1 and 8" there and would stop
            # training.
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize
            op.aug_fn = compiled.get(op.aug_fn, op.aug_fn)


def _split_pair(spec: DataSpec, download: bool) -> tuple[Dataset, Dataset, tuple[str, ...], str]:
    """Untransformed (train, val) splits of PIL images, the class names, and a name of the source."""
    if spec.kind == "synthetic":
        check_synthetic(spec)
        train, val = (
            synthetic.SyntheticImages(spec.num_classes, length, spec.image_size, spec.generation_seed, split)
            for length, split in ((spec.train_size, "train"), (spec.val_size, "val"))
        )
        return train, val, tuple(train.classes), "synthetic"
    if spec.kind == "imagefolder":
        root = Path(spec.path)
        check_imagefolder(root, verify_images=False)
        train, val = (ImageFolder(str(root / split), loader=load_rgb) for split in SPLIT_FOLDERS)
        return train, val, tuple(train.classes), f"imagefolder {root}"
    (torchvision_class, title), local_class = CIFAR_SOURCES[spec.kind], _LOCAL_CIFAR[spec.kind]
    root = cifar_root(spec)
    if not download:
        check_cifar(spec, unpickle=False, download=False)  # a missing file says "pass --download"
    try:
        train, val = (local_class(str(root), train=is_train, download=download) for is_train in (True, False))
    except Exception as error:  # a failed download (URLError) or a damaged file
        raise DataError(f"cannot load {title} from {root / torchvision_class.base_folder}: {error}") from None
    return train, val, tuple(train.classes), f"{title} at {root}"


def build_datasets(spec: DataSpec, recipe: RecipeSpec, *, cache_dir: str | Path | None = None,
                   download: bool | None = None) -> Datasets:
    """The train and val splits of `spec`, transformed as `recipe` says, at `spec.image_size` pixels.

    With `spec.cache_short_side` > 0 (imagefolder data), both splits are read from the image cache in
    `cache_dir`, built there first if no run has built it (`roadmap.data.cache`): the train split stored
    at that short side, the val split at the eval transform's resize, so evaluation sees the same pixels.
    `download` (a run setting, --download) lets torchvision fetch CIFAR.
    """
    download = bool(download)
    check_cache(spec, cache_dir)
    train, val, class_names, source = _split_pair(spec, download)
    train_transform, eval_transform = build_transforms(recipe, spec.image_size)
    description = f"{source} ({len(class_names)} classes, {len(train)}/{len(val)} images, {spec.image_size} px)"
    records = tuple(_record(spec, split, images, len(class_names))
                    for split, images in zip(SPLIT_FOLDERS, (train, val)))
    if spec.cache_short_side:
        root, short_side = Path(spec.path), spec.cache_short_side
        train = open_store(Path(cache_dir), root, "train", train.samples, class_names,
                           StoredSize(short_side, "bicubic", enlarge=False))
        val = open_store(Path(cache_dir), root, "val", val.samples, class_names, _eval_resize(eval_transform))
        train_transform, eval_transform = ArrayTransform(train_transform), ArrayTransform(eval_transform)
        description = description[:-1] + f", train images cached at a short side of {short_side} px in {cache_dir})"
    return Datasets(
        train=TransformedImages(train, train_transform, deterministic=False),
        val=TransformedImages(val, eval_transform, deterministic=True),
        num_classes=len(class_names),
        class_names=class_names,
        description=description,
        kind=spec.kind,
        random_erasing=recipe.random_erasing,
        records=records,
    )


def _eval_resize(eval_transform: Callable) -> StoredSize:
    """The eval transform's first step, Resize(short side), as the val split is stored."""
    resize = eval_transform.transforms[0]
    if not isinstance(resize, transforms.Resize) or not isinstance(resize.size, int):
        raise TypeError(f"the eval transform starts with {resize!r}, not a Resize to a short side")
    return StoredSize(resize.size, resize.interpolation.value, enlarge=True)


def _record(spec: DataSpec, split: str, images: Dataset, num_classes: int) -> DatasetRecord:
    """A split as MLflow will record it: synthetic data by its generator and parameters, files by their list."""
    context = "training" if split == "train" else "validation"
    shape = (3, spec.image_size, spec.image_size)
    if spec.kind == "synthetic":
        generator = {"generation_seed": spec.generation_seed, "num_classes": num_classes, "images": len(images),
                     "image_size": spec.image_size, "split": split}
        digest = hashlib.sha256(repr(sorted(generator.items())).encode()).hexdigest()[:16]
        return DatasetRecord(name=f"synthetic-{split}", digest=digest, context=context, source_kind="code",
                             source="roadmap.data.synthetic", num_images=len(images), num_classes=num_classes,
                             image_shape=shape, generator=generator)
    if spec.kind == "imagefolder":
        root = Path(spec.path).resolve()
        listing = "\n".join(f"{Path(path).resolve().relative_to(root)}:{label}" for path, label in images.samples)
        return DatasetRecord(name=f"{root.name}-{split}", digest=hashlib.sha256(listing.encode()).hexdigest()[:16],
                             context=context, source_kind="local", source=str(root / split),
                             num_images=len(images), num_classes=num_classes, image_shape=shape)
    folder = Path(images.root) / images.base_folder
    files = images.train_list if split == "train" else images.test_list
    listing = "\n".join(f"{name}:{(folder / name).stat().st_size}" for name, _ in files)
    return DatasetRecord(name=f"{CIFAR_SOURCES[spec.kind][1]}-{split}",
                         digest=hashlib.sha256(listing.encode()).hexdigest()[:16], context=context,
                         source_kind="local", source=str(folder.resolve()), num_images=len(images),
                         num_classes=num_classes, image_shape=shape)
