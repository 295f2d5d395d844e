"""Data sets (synthetic, ImageFolder, CIFAR) from a DataSpec, recipe transforms via timm, and seeded loaders.

Items are uint8 CHW tensors, as timm's fast path makes them: normalization and random erasing happen on
whole batches, on the training device (`DeviceBatches`).
"""
from __future__ import annotations

import contextlib
import math
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, auto_augment, create_transform
from timm.data.loader import PrefetchLoader
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from . import synthetic
from .spec import DataSpec, RecipeSpec, SpecError

# validate_data checks every image of a tree up to this many files with PIL's verify (it parses the file
# without decoding pixels: ~0.3 ms a small PNG), and an evenly spaced sample of this many in a larger
# tree (ImageNet: 1 in 65). An image it misses still fails when loaded, naming the file.
IMAGE_CHECK_LIMIT = 20_000
SPLIT_FOLDERS = ("train", "val")
# Transformed items a split keeps in the training process (see TransformedImages): the demo's whole study
# (2,304 + 500 images of 32 px, 4 epochs) takes 30 MB of it.
KEEP_BYTES = 512 * 2**20


class DataError(SpecError):
    """A data source that cannot be used; the message names the path or value at fault."""

    def __init__(self, message: str):
        # A DataLoader worker re-raises our error in the main process as DataError("Caught DataError in
        # DataLoader worker ...\n<traceback>"): keep only the original one-line message.
        if message.startswith("Caught DataError") and "DataError: " in message:
            message = message.rstrip().rsplit("DataError: ", 1)[1]
        super().__init__(message)


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


# ---------------------------------------------------------------------------------------------- checks


def validate_data(spec: DataSpec) -> None:
    """Every check that can fail before training starts; raises a one-line DataError."""
    if spec.kind == "synthetic":
        _check_synthetic(spec)
    elif spec.kind == "imagefolder":
        _check_imagefolder(Path(spec.path), verify_images=True)
    else:
        _check_cifar(spec, unpickle=True)


def _check_synthetic(spec: DataSpec) -> None:
    if spec.num_classes > synthetic.MAX_CLASSES:
        raise DataError(f"num_classes={spec.num_classes} is not valid for synthetic data; "
                        f"choose 2 to {synthetic.MAX_CLASSES}")


def _check_directory(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a directory")


def _check_imagefolder(root: Path, verify_images: bool) -> None:
    _check_directory(root, "data path")
    files: list[str] = []
    classes_of: dict[str, list[str]] = {}
    for split in SPLIT_FOLDERS:
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"data path {root} has no {split}/ folder; expected {root}/{split}/<class>/<image>")
        try:
            classes, class_to_idx = find_classes(folder)
        except FileNotFoundError:
            raise DataError(f"{folder} has no class folders; expected {folder}/<class>/<image>") from None
        samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        with_images = {classes[label] for _, label in samples}
        empty = [name for name in classes if name not in with_images]
        if empty:
            raise DataError(f"class folder {folder / empty[0]} has no images ({', '.join(IMG_EXTENSIONS)})")
        classes_of[split] = classes
        files += [path for path, _ in samples]
    train_only = sorted(set(classes_of["train"]) - set(classes_of["val"]))
    val_only = sorted(set(classes_of["val"]) - set(classes_of["train"]))
    if train_only:
        raise DataError(f"class {train_only[0]!r} is in {root}/train/ but missing from {root}/val/")
    if val_only:
        raise DataError(f"class {val_only[0]!r} is in {root}/val/ but missing from {root}/train/")
    if verify_images:
        stride = math.ceil(len(files) / IMAGE_CHECK_LIMIT)
        for path in files[::stride]:
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
                raise DataError(f"unreadable image {path}: {error}") from None


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


# kind -> (the torchvision class that names the files, our local-copy class, a title)
_CIFAR = {
    "cifar10": (CIFAR10, LocalCIFAR10, "CIFAR-10"),
    "cifar100": (CIFAR100, LocalCIFAR100, "CIFAR-100"),
}


def _cifar_root(spec: DataSpec) -> Path:
    """The folder that holds "cifar-10-batches-py" / "cifar-100-python"; PATH may also name that folder."""
    path = Path(spec.path)
    torchvision_class = _CIFAR[spec.kind][0]
    return path.parent if path.name == torchvision_class.base_folder else path


def _check_cifar(spec: DataSpec, unpickle: bool) -> None:
    torchvision_class, _, title = _CIFAR[spec.kind]
    folder = _cifar_root(spec) / torchvision_class.base_folder
    names = [name for name, _ in torchvision_class.train_list + torchvision_class.test_list]
    missing = [name for name in [*names, torchvision_class.meta["filename"]] if not (folder / name).is_file()]
    if missing:
        if spec.download:
            return  # torchvision fetches it in build_datasets
        raise DataError(f"{title} not found: {folder / missing[0]} is missing; pass --download to fetch it")
    if not unpickle:
        return
    for name in names:
        _unpickle(folder / name, ("data", "labels" if spec.kind == "cifar10" else "fine_labels"))
    _unpickle(folder / torchvision_class.meta["filename"], (torchvision_class.meta["key"],))


def _unpickle(path: Path, keys: tuple[str, ...]) -> None:
    try:
        with open(path, "rb") as file:
            entry = pickle.load(file, encoding="latin1")
        absent = [key for key in keys if key not in entry]
    except Exception as error:  # unpickling raises many types (UnpicklingError, EOFError, ValueError, ...)
        raise DataError(f"unreadable CIFAR file {path}: {error}") from None
    if absent:
        raise DataError(f"CIFAR file {path} lacks the key {absent[0]!r}")


# ------------------------------------------------------------------------------------------- data sets


def _load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, but an unreadable file raises a DataError naming it."""
    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise DataError(f"unreadable image {path}: {error}") from None


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
        with _saved_generators():
            for position in missing:
                items[position] = self._transform(keys[position])
        return items

    def _keeps(self, key: int | tuple[int, int]) -> bool:
        return isinstance(key, tuple) or self.deterministic

    def _transform(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.images[index]
        if sample_seed is not None:
            _seed_generators(sample_seed)
        item = self.transform(image), int(label)
        if self._keeps(key) and get_worker_info() is None and self.kept_bytes + item[0].nbytes <= self.keep_bytes:
            self._kept[key] = item
            self.kept_bytes += item[0].nbytes
        return item


def _seed_generators(sample_seed: int) -> None:
    random.seed(sample_seed)
    np.random.seed(sample_seed % 2**32)
    torch.default_generator.manual_seed(sample_seed)  # torch.manual_seed would also queue CUDA seeding: slow


def derived_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of the whole numbers `keys` (mixed by NumPy's SeedSequence)."""
    state = np.random.SeedSequence([key % 2**63 for key in keys]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _torch_generator(device: torch.device) -> torch.Generator:
    """torch's global generator of `device` (the CPU's, or that GPU's)."""
    return torch.cuda.default_generators[_cuda_index(device)] if device.type == "cuda" else torch.default_generator


@contextlib.contextmanager
def _saved_generators(device: torch.device | None = None) -> Iterator[None]:
    """The global generators (Python, NumPy, torch's CPU one and a GPU `device`'s) as they were before the block."""
    if get_worker_info() is not None:  # a worker process: nothing else draws from its generators
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    on_gpu = device is not None and device.type == "cuda"
    with torch.random.fork_rng(devices=[_cuda_index(device)] if on_gpu else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


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
    _allow_zero_bit_posterize(train)
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


def _allow_zero_bit_posterize(transform: Callable) -> None:
    # timm's "PosterizeIncreasing" keeps 0 bits at magnitude 10, which rand-m9-mstd0.5 reaches ~2% of the
    # time; recent Pillow raises "bits must be between or equal to 1 and 8" there and would stop training.
    for step in transform.transforms:
        ops = list(getattr(step, "ops", [])) + [op for ops in getattr(step, "policy", []) for op in ops]
        for op in ops:
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize


def _split_pair(spec: DataSpec) -> tuple[Dataset, Dataset, tuple[str, ...], str]:
    """Untransformed (train, val) splits of PIL images, the class names, and a name of the source."""
    if spec.kind == "synthetic":
        _check_synthetic(spec)
        train, val = (
            synthetic.SyntheticImages(spec.num_classes, length, spec.image_size, spec.generation_seed, split)
            for length, split in ((spec.train_size, "train"), (spec.val_size, "val"))
        )
        return train, val, tuple(train.classes), "synthetic"
    if spec.kind == "imagefolder":
        root = Path(spec.path)
        _check_imagefolder(root, verify_images=False)
        train, val = (ImageFolder(str(root / split), loader=_load_rgb) for split in SPLIT_FOLDERS)
        return train, val, tuple(train.classes), f"imagefolder {root}"
    torchvision_class, local_class, title = _CIFAR[spec.kind]
    root = _cifar_root(spec)
    if not spec.download:
        _check_cifar(spec, unpickle=False)  # a missing file says "pass --download"; loading reads the rest
    try:
        train, val = (local_class(str(root), train=is_train, download=spec.download) for is_train in (True, False))
    except Exception as error:  # a failed download (URLError) or a damaged file
        raise DataError(f"cannot load {title} from {root / torchvision_class.base_folder}: {error}") from None
    return train, val, tuple(train.classes), f"{title} at {root}"


def build_datasets(spec: DataSpec, recipe: RecipeSpec) -> Datasets:
    """The train and val splits of `spec`, transformed as `recipe` says, at `spec.image_size` pixels."""
    train, val, class_names, source = _split_pair(spec)
    train_transform, eval_transform = build_transforms(recipe, spec.image_size)
    description = f"{source} ({len(class_names)} classes, {len(train)}/{len(val)} images, {spec.image_size} px)"
    return Datasets(
        train=TransformedImages(train, train_transform, deterministic=False),
        val=TransformedImages(val, eval_transform, deterministic=True),
        num_classes=len(class_names),
        class_names=class_names,
        description=description,
        kind=spec.kind,
        random_erasing=recipe.random_erasing,
    )


# --------------------------------------------------------------------------------------------- loaders


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler whose items are (index, sample_seed): order AND augmentation draws depend only
    on (seed, epoch, index), whatever the number of workers and whether they persist across epochs."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in super().__iter__():
            yield index, derived_seed(self.seed, self.epoch, index)


class ShardSampler(Sampler):
    """Every `world_size`-th index from `rank`, in order, with no padding: each image is seen exactly once
    across processes (shards differ by at most one image), unlike DistributedSampler, which repeats
    images to even the shards. Sum (correct, count) over processes rather than averaging accuracies."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class DeviceBatches(PrefetchLoader):
    """timm's PrefetchLoader (uint8 batches moved to the device and normalized there; on CUDA the copy of
    the next batch overlaps the current step) plus the recipe's random erasing on each normalized batch.

    The erasing draws come from (seed, epoch, rank, batch index), so a resumed or repeated epoch erases
    the same patches whatever the number of loader workers; the global generators are left as they were.
    """

    def __init__(self, loader: DataLoader, *, device: torch.device, random_erasing: float = 0.0):
        super().__init__(loader, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, device=device)
        # "pixel": per-pixel normal noise in normalized units, the official ConvNeXt setting (--remode pixel).
        self.erasing = RandomErasing(random_erasing, mode="pixel", device=device) if random_erasing > 0 else None

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size

    @property
    def generator(self) -> torch.Generator | None:
        return self.loader.generator

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch_key = [getattr(self.loader.sampler, name, 0) for name in ("seed", "epoch", "rank")]
        for batch_index, (images, labels) in enumerate(super().__iter__()):
            if self.erasing is not None:
                seed = derived_seed(*epoch_key, batch_index)
                with _saved_generators(images.device):  # timm's erasing draws from Python's and torch's
                    random.seed(seed)
                    _torch_generator(images.device).manual_seed(seed)
                    images = self.erasing(images)
            yield images, labels


def build_loaders(datasets: Datasets, batch_size: int, *, workers: int, seed: int, rank: int = 0,
                  world_size: int = 1, device: torch.device | str = "cpu") -> tuple[DeviceBatches, DeviceBatches]:
    """(train, val) loaders for one process of `world_size`; `batch_size` is per process. They give
    normalized float32 batches on `device`, train batches with the recipe's random erasing.

    Call `train_loader.sampler.set_epoch(epoch)` before each epoch: the train order and augmentations
    are then a pure function of (seed, epoch), so a resumed run sees exactly what an uninterrupted one saw.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank={rank} is not valid for world_size={world_size}; choose 0 to {world_size - 1}")
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} is not valid; a whole number >= 1")
    if len(datasets.train) < batch_size * world_size:
        raise DataError(f"the train split has {len(datasets.train)} images, fewer than one batch "
                        f"({batch_size} x {world_size} processes)")
    device = torch.device(device)
    common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    train_sampler = SeededDistributedSampler(datasets.train, num_replicas=world_size, rank=rank,
                                             shuffle=True, seed=seed, drop_last=True)
    # Its own generator, so that starting an epoch does not draw from torch's global one.
    train = DataLoader(datasets.train, batch_size=batch_size, sampler=train_sampler, drop_last=True,
                       generator=torch.Generator().manual_seed(seed), **common)
    val = DataLoader(datasets.val, batch_size=batch_size, sampler=ShardSampler(len(datasets.val), rank, world_size),
                     shuffle=False, drop_last=False, generator=torch.Generator().manual_seed(seed), **common)
    erasing = datasets.random_erasing
    return DeviceBatches(train, device=device, random_erasing=erasing), DeviceBatches(val, device=device)
