"""Images per second per CPU core of a recipe's train transform: from a JPEG tree and from the image cache.

    python benchmarks/data_pipeline.py                       # a tree of 500x375 JPEGs made from sample photos
    python benchmarks/data_pipeline.py --data imagefolder:DIR --image-size 224

Both paths run in this one process with one torch thread, as one data-loader worker runs them: an item
is the file read and decoded (JPEG) or sliced from the mapped cache, then the recipe's train transform
to a uint8 tensor (timm's RandomResizedCrop, flip, RandAugment). CPU time per image is measured in
alternating rounds so that both paths share whatever else the machine is doing; figures are medians
over rounds. The last line is `ratio cache/jpeg <x>`.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from roadmap.data import build_datasets, default_cache_short_side
from roadmap.errors import SpecError
from roadmap.recipes import CLASSIC, MODERN
from roadmap.spec import DataSpec
from roadmap.study.presets import get_preset

RECIPES = {"classic": CLASSIC, "modern": MODERN}
# The test images: real photographs, 500x375 pixels, JPEG quality 90 (ImageNet's typical size).
PHOTO_SIZE, PHOTO_QUALITY = (500, 375), 90


def sample_photographs() -> list[np.ndarray]:
    """The photographs that installed packages ship: matplotlib's (a dependency) and scikit-learn's (MLflow's)."""
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as photo:
        photos = [np.asarray(photo.convert("RGB"))]
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return photos
    return photos + list(load_sample_images().images)


def write_photo_tree(root: Path, train_images: int, val_images: int, classes: int = 2, seed: int = 0) -> Path:
    """root/{train,val}/<class>/<n>.jpg: random 500x375 windows of the sample photographs (flipped half the
    time), saved as JPEG at quality 90."""
    photos, rng = sample_photographs(), np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    for split, count in (("train", train_images), ("val", val_images)):
        for n in range(count):
            folder = root / split / f"class{n % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            photo = photos[n % len(photos)]
            top, left = rng.integers(0, photo.shape[0] - height + 1), rng.integers(0, photo.shape[1] - width + 1)
            window = photo[top:top + height, left:left + width]
            window = window[:, ::-1] if rng.random() < 0.5 else window
            Image.fromarray(np.ascontiguousarray(window)).save(folder / f"{n}.jpg", quality=PHOTO_QUALITY)
    return root


def data_spec(source: str, image_size: int, short_side: int) -> DataSpec:
    return DataSpec(source=source, image_size=image_size, cache_short_side=short_side)


def cpu_seconds_per_image(split, indices: list[int]) -> float:
    """CPU seconds of this process per item: fetch (decode or slice) + the split's transform to a tensor."""
    images, transform = split.images, split.transform
    start = time.process_time()
    for index in indices:
        transform(images[index][0])
    return (time.process_time() - start) / len(indices)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "source", default=None, help="imagefolder:DIR with train/ and val/ (default: a tree of "
              "500x375 JPEGs at quality 90 cut from sample photographs, in a temporary folder).")
@click.option("--preset", default="proxy", show_default=True, help="The preset whose resolution is used.")
@click.option("--image-size", type=int, default=None, help="Training resolution, pixels [default: the preset's].")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="modern", show_default=True)
@click.option("--short-side", type=int, default=None,
              help="Cached short side of the train images, pixels [default: 1.2 x the resolution].")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Image cache folder [default: a temporary one, built in this run].")
@click.option("--images", type=int, default=100, show_default=True, help="Train images timed per round.")
@click.option("--rounds", type=int, default=15, show_default=True, help="Alternating rounds; medians reported.")
@click.option("--quick", is_flag=True, help="A check that it runs: 12 images, 2 rounds.")
def main(source, preset, image_size, recipe, short_side, cache_dir, images, rounds, quick) -> None:
    """Train-transform throughput per CPU core from a JPEG tree and from its image cache, side by side."""
    try:
        run(source, preset, image_size, recipe, short_side, cache_dir, 12 if quick else images, 2 if quick else rounds)
    except SpecError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


def run(source, preset, image_size, recipe_name, short_side, cache_dir, images, rounds) -> None:
    torch.set_num_threads(1)
    image_size = image_size or get_preset(preset).image_size
    short_side = short_side or default_cache_short_side(image_size)
    recipe = RECIPES[recipe_name]
    with tempfile.TemporaryDirectory() as scratch:
        if source is None:
            made = time.perf_counter()
            root = write_photo_tree(Path(scratch) / "photos", images, 2)
            source = f"imagefolder:{root}"
            print(f"made {images} + 2 JPEGs of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} px at quality {PHOTO_QUALITY} from "
                  f"sample photographs in {time.perf_counter() - made:.1f} s")
        jpeg = build_datasets(data_spec(source, image_size, 0), recipe)
        built = time.perf_counter()
        cached = build_datasets(data_spec(source, image_size, short_side), recipe,
                                cache_dir=cache_dir or Path(scratch) / "cache")
        print(f"cache of {len(cached.train)} + {len(cached.val)} images ready in {time.perf_counter() - built:.1f} s "
              f"({os.cpu_count()} cores on this machine)")
        indices = [int(i) for i in np.random.default_rng(0).permutation(len(jpeg.train))[:images]]
        for split in (jpeg.train, cached.train):  # warm: page cache, imports, first-call setup
            cpu_seconds_per_image(split, indices[:4])
        seconds = {"jpeg": [], "cache": []}
        for _ in range(rounds):
            seconds["jpeg"].append(cpu_seconds_per_image(jpeg.train, indices))
            seconds["cache"].append(cpu_seconds_per_image(cached.train, indices))
    # Each round's ratio compares two passes seconds apart: the machine's other load cancels in it.
    ratios = [j / c for j, c in zip(seconds["jpeg"], seconds["cache"])]
    print(f"{recipe_name} recipe's train transform at {image_size} px (timm: RandomResizedCrop, flip"
          f"{', RandAugment ' + recipe.auto_augment if recipe.auto_augment else ''}) to a uint8 tensor; "
          f"CPU time of one process with 1 torch thread, {len(indices)} images x {rounds} rounds, medians; "
          f"RandAugment's shears and translations {'compiled by numba' if compiled_ops() else 'by Pillow'}")
    print(f"{'source':<44}{'img/s per core':>16}{'ms per image':>14}")
    for name, label in (("jpeg", f"JPEG tree ({source.split(':', 1)[1]})"[:43]),
                        ("cache", f"cache, train short side {short_side} px")):
        median = statistics.median(seconds[name])
        print(f"{label:<44}{1 / median:>16.1f}{1000 * median:>14.2f}")
    low, high = (statistics.quantiles(ratios, n=4)[index] for index in (0, 2)) if len(ratios) > 1 else ratios * 2
    print(f"cache/jpeg per round: median {statistics.median(ratios):.2f}, quartiles {low:.2f} to {high:.2f}")
    print(f"ratio cache/jpeg {statistics.median(ratios):.2f}")


def compiled_ops() -> bool:
    from roadmap.data import affine

    return affine.numba is not None


if __name__ == "__main__":
    main()
