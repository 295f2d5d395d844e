"""An image-folder split decoded once and stored resized, as memory-mapped uint8 arrays read without decoding.

A stored split is a folder `<cache>/<source>-<split>-<size>-<key>/` of numpy's own files:
  pixels.npy  every image's RGB pixels, (height, width, 3) uint8 in row-major order, one after another;
  index.npy   (images, 4) int64 rows: offset into pixels, height, width, label;
  meta.json   the source, the size, the counts and the versions that built it (written last).
Readers map pixels.npy (`np.load(mmap_mode="r")`): an item is a slice, the page cache is shared by every
loader worker and every job on a node, and nothing is decoded. A memory-mapped array was chosen over
webdataset (sequential tar shards: no random access by index, which the seeded sampler needs), litdata
(chunked streaming with its own shuffling and distribution, built for object stores) and FFCV's .beton
(a whole loader of its own, unmaintained for current torch): the index -> item contract of a map-style
Dataset stays, and so do this harness's samplers, seeds and loaders.

The key is a hash of the resize, the format and the source's listing (relative path, label, size and
modification time of every file): a changed, added or removed image gives a new key and a new build.
A build takes an exclusive flock on `<folder>.lock`, so among simultaneous starts (the jobs of a SLURM
array) one builds and the others wait, then read. It fills `<folder>.partial/` chunk by chunk with every
usable core, records each finished chunk, resumes from them after a kill, and renames the folder into
place when complete: a reader never sees half a cache.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from tqdm import tqdm

from ..holder import write_holder
from .checks import DataError
from .workers import usable_cores

FORMAT_VERSION = 1
# The train images' cached short side, as a multiple of the training resolution (192 px for 160 px): room
# for RandomResizedCrop's largest crops, at a fraction of a typical photo's pixels (375 px for ImageNet's).
SHORT_SIDE_PER_RESOLUTION = 1.2
# Images per unit of work of a build: what a resumed build redoes at most, per process.
CHUNK_IMAGES = 256
Sample = tuple[str, int]  # (path of an image file, label), as torchvision's ImageFolder lists them


@dataclass(frozen=True)
class StoredSize:
    """How a split's images are resized before they are stored; the aspect ratio is kept."""

    # The stored short side, pixels.
    short_side: int
    # The resampling filter, by torchvision's name ("bicubic", "bilinear"); PIL's, antialiased when shrinking.
    interpolation: str
    # True: every image gets this short side, as torchvision's Resize(short_side) gives it (the eval
    # transform's first step). False: only larger images shrink; smaller ones are stored as decoded.
    enlarge: bool

    @property
    def tag(self) -> str:
        """e.g. "short192-bicubic-shrink": part of the folder's name."""
        return f"short{self.short_side}-{self.interpolation}{'' if self.enlarge else '-shrink'}"

    def shape(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) once stored: torchvision's Resize(short_side) rule, long side truncated."""
        short, long = (width, height) if width <= height else (height, width)
        if short == self.short_side or (short < self.short_side and not self.enlarge):
            return height, width
        new_long = int(self.short_side * long / short)
        return (new_long, self.short_side) if width <= height else (self.short_side, new_long)

    def resize(self, image: Image.Image) -> Image.Image:
        height, width = self.shape(*image.size)
        if (width, height) == image.size:
            return image
        return F.resize(image, [height, width], InterpolationMode(self.interpolation))


def default_cache_short_side(image_size: int) -> int:
    """The cached short side (pixels) of the train images for training at `image_size` pixels."""
    return round(SHORT_SIDE_PER_RESOLUTION * image_size)


def load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, but an unreadable file raises a DataError naming it."""
    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise DataError(f"unreadable image {path}: {error}") from None


def store_folder(cache_dir: Path, root: Path, split: str, samples: Sequence[Sample], stored: StoredSize) -> Path:
    """Where the split `root/split` resized as `stored` is kept: the name carries the key of its contents."""
    key = hashlib.sha256(f"format {FORMAT_VERSION}\n{stored.tag}\n".encode())
    split_root = root / split
    for path, label in samples:
        status = os.stat(path)
        relative = os.path.relpath(path, split_root)
        key.update(f"{relative}\t{label}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
    return Path(cache_dir) / f"{root.resolve().name}-{split}-{stored.tag}-{key.hexdigest()[:16]}"


class StoredImages(Dataset):
    """A stored split: items (read-only uint8 (height, width, 3) array, label), sliced from the mapped pixels.

    Like torchvision's ImageFolder it has `samples`, `targets` and `classes`: those of the source files.
    The mapping is opened in each process on first use, so DataLoader workers never pickle it.
    """

    def __init__(self, folder: Path, samples: Sequence[Sample], classes: Sequence[str]):
        self.folder, self.samples, self.classes = folder, list(samples), list(classes)
        self.targets = [label for _, label in self.samples]
        index = np.load(folder / "index.npy")
        if len(index) != len(self.samples) or not np.array_equal(index[:, 3], self.targets):
            raise DataError(f"the image cache {folder} does not match its source's {len(self.samples)} images "
                            "and labels; delete it to rebuild it")
        self.offsets, self.heights, self.widths = (index[:, column] for column in range(3))
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if self._pixels is None:
            self._pixels = np.load(self.folder / "pixels.npy", mmap_mode="r")
        offset, height, width = int(self.offsets[index]), int(self.heights[index]), int(self.widths[index])
        return self._pixels[offset:offset + height * width * 3].reshape(height, width, 3), self.targets[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}


def open_store(cache_dir: Path, root: Path, split: str, samples: Sequence[Sample], classes: Sequence[str],
               stored: StoredSize, *, processes: int | None = None, progress: bool = True) -> StoredImages:
    """The split `root/split` stored as `stored` under `cache_dir`, built first if no process has built it.

    `samples` and `classes` are the source's (torchvision's ImageFolder listing): the stored items keep
    their order and labels. `processes` build it (default: every core this process may use).
    """
    folder = store_folder(cache_dir, root, split, samples, stored)
    if not (folder / "meta.json").is_file():
        with _build_lock(folder):
            if not (folder / "meta.json").is_file():  # not built by the process we waited for
                _build(folder, root / split, samples, stored, processes or usable_cores(), progress)
    return StoredImages(folder, samples, classes)


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on `<folder>.lock`, waited for; the kernel drops it when its holder dies."""
    path = folder.with_name(folder.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            print(f"waiting for {holder} to finish the image cache {folder}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        write_holder(handle)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(folder: Path, split_root: Path, samples: Sequence[Sample], stored: StoredSize, processes: int,
           progress: bool) -> None:
    """Fill `<folder>.partial` (resuming what a killed build finished), then rename it to `folder`."""
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    paths = [path for path, _ in samples]
    chunks = [range(start, min(start + CHUNK_IMAGES, len(paths))) for start in range(0, len(paths), CHUNK_IMAGES)]
    done_path = partial / "done.txt"
    processes = max(1, min(processes, len(chunks)))
    with contextlib.ExitStack() as stack:
        # Forked, as torch's DataLoader starts its workers on Linux; one process builds a single chunk itself.
        pool = stack.enter_context(multiprocessing.get_context("fork").Pool(processes)) if processes > 1 else None
        if not (partial / "index.npy").is_file():
            parts = (pool.imap if pool else map)(_image_sizes, [[paths[i] for i in chunk] for chunk in chunks])
            _plan(partial, [size for part in parts for size in part], [label for _, label in samples], stored)
            done_path.unlink(missing_ok=True)  # a new plan: none of its chunks is stored yet
        if not done_path.is_file():
            done_path.write_text("")
        done = {int(line) for line in done_path.read_text().split()}
        todo = [number for number in range(len(chunks)) if number not in done]
        resuming = f", resuming after {len(done)} of {len(chunks)} chunks" if done else ""
        print(f"caching {split_root} ({len(paths)} images, {stored.tag}) in {folder} with {processes} "
              f"process{'es' if processes > 1 else ''}{resuming}", file=sys.stderr, flush=True)
        bar = stack.enter_context(tqdm(
            total=len(paths), initial=sum(len(chunks[number]) for number in done), unit="img", disable=not progress,
            desc="image cache", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 60.0))
        jobs = [(number, partial, [(i, paths[i]) for i in chunks[number]], stored) for number in todo]
        with open(done_path, "a") as record:
            for number in (pool.imap_unordered if pool else map)(_store_chunk, jobs):
                record.write(f"{number}\n")
                record.flush()
                os.fsync(record.fileno())
                bar.update(len(chunks[number]))
    index = np.load(partial / "index.npy")
    meta = {"format": FORMAT_VERSION, "source": str(split_root), "stored": stored.tag, "images": len(paths),
            "pixel_bytes": int(index[:, 1:3].prod(axis=1).sum() * 3),
            "versions": {"pillow": PIL.__version__, "numpy": np.__version__},
            "built": time.strftime("%Y-%m-%d %H:%M:%S"), "by": f"pid {os.getpid()} on {socket.gethostname()}"}
    _write_atomically(partial / "meta.json", json.dumps(meta, indent=1).encode())
    os.rename(partial, folder)


def _image_sizes(paths: list[str]) -> list[tuple[int, int]]:
    """(width, height) of each file from its header, without decoding its pixels."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except Exception as error:  # PIL raises many types
            raise DataError(f"unreadable image {path}: {error}") from None
    return sizes


def _plan(partial: Path, sizes: list[tuple[int, int]], labels: list[int], stored: StoredSize) -> None:
    """Every image's place in pixels.npy; the index is written last: its presence marks a plan."""
    shapes = np.array([stored.shape(width, height) for width, height in sizes], dtype=np.int64).reshape(-1, 2)
    lengths = shapes.prod(axis=1) * 3
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pixels = np.lib.format.open_memmap(partial / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(max(1, int(lengths.sum())),))
    del pixels  # created at full length; the chunks fill it
    index = np.column_stack([offsets, shapes, np.asarray(labels, dtype=np.int64)])
    buffer = io.BytesIO()
    np.save(buffer, index)
    _write_atomically(partial / "index.npy", buffer.getvalue())


def _store_chunk(job: tuple[int, Path, list[tuple[int, str]], StoredSize]) -> int:
    """Decode, resize and write one chunk of images into the mapped pixels; its number once on disk."""
    number, partial, items, stored = job
    index = np.load(partial / "index.npy")
    pixels = np.load(partial / "pixels.npy", mmap_mode="r+")
    for position, path in items:
        offset, height, width, _ = (int(value) for value in index[position])
        image = np.asarray(stored.resize(load_rgb(path)))
        if image.shape != (height, width, 3):
            raise DataError(f"image {path} decodes to {image.shape[1]}x{image.shape[0]} pixels, not the "
                            f"{width}x{height} its header gave once resized; it may have changed during the build")
        pixels[offset:offset + image.size] = image.reshape(-1)
    pixels.flush()
    return number


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
