"""Checks of a data source that run before any training: the tree, the class folders, every image or file."""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..errors import SpecError
from ..spec import DataSpec
from . import synthetic

# validate_data checks every image of a tree up to this many files with PIL's verify (it parses the file
# without decoding pixels: ~0.3 ms a small PNG), and an evenly spaced sample of this many in a larger
# tree (ImageNet: 1 in 65). An image it misses still fails when loaded, naming the file.
IMAGE_CHECK_LIMIT = 20_000
SPLIT_FOLDERS = ("train", "val")


class DataError(SpecError):
    """A data source that cannot be used; the message names the path or value at fault."""

    def __init__(self, message: str):
        # A DataLoader worker re-raises our error in the main process as DataError("Caught DataError in
        # DataLoader worker ...\n<traceback>"): keep only the original one-line message.
        if message.startswith("Caught DataError") and "DataError: " in message:
            message = message.rstrip().rsplit("DataError: ", 1)[1]
        super().__init__(message)



# kind -> (the torchvision class that names the files, a title)
CIFAR_SOURCES = {
    "cifar10": (CIFAR10, "CIFAR-10"),
    "cifar100": (CIFAR100, "CIFAR-100"),
}


def validate_data(spec: DataSpec, *, cache_dir: str | Path | None = None, download: bool | None = None) -> None:
    """Every check that can fail before training starts; raises a one-line DataError.

    `cache_dir` is the image cache's folder and `download` lets torchvision fetch a missing CIFAR (both run
    settings, not part of the DataSpec).
    """
    check_cache(spec, cache_dir)
    if spec.kind == "synthetic":
        check_synthetic(spec)
    elif spec.kind == "imagefolder":
        check_imagefolder(Path(spec.path), verify_images=True)
    else:
        check_cifar(spec, unpickle=True, download=download)


def check_cache(spec: DataSpec, cache_dir: str | Path | None) -> None:
    """A cached DataSpec (DataSpec.cache_short_side > 0, checked there) needs a folder it can write."""
    short_side = spec.cache_short_side
    if not short_side:
        return
    if cache_dir is None:
        raise DataError(f"cache_short_side={short_side} needs a folder for the image cache: pass --data-cache DIR")
    folder = Path(cache_dir)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the image cache folder {folder} is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the image cache folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"the image cache folder {folder} is not writable")


def check_synthetic(spec: DataSpec) -> None:
    if spec.num_classes > synthetic.MAX_CLASSES:
        raise DataError(f"num_classes={spec.num_classes} is not valid for synthetic data; "
                        f"choose 2 to {synthetic.MAX_CLASSES}")


def _check_directory(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a directory")


def check_imagefolder(root: Path, verify_images: bool) -> None:
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



def cifar_root(spec: DataSpec) -> Path:
    """The folder that holds "cifar-10-batches-py" / "cifar-100-python"; PATH may also name that folder."""
    path = Path(spec.path)
    torchvision_class = CIFAR_SOURCES[spec.kind][0]
    return path.parent if path.name == torchvision_class.base_folder else path


def check_cifar(spec: DataSpec, unpickle: bool, download: bool | None = None) -> None:
    torchvision_class, title = CIFAR_SOURCES[spec.kind]
    folder = cifar_root(spec) / torchvision_class.base_folder
    names = [name for name, _ in torchvision_class.train_list + torchvision_class.test_list]
    missing = [name for name in [*names, torchvision_class.meta["filename"]] if not (folder / name).is_file()]
    if missing:
        if download:
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

