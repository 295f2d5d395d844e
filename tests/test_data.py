"""Tests of roadmap.data and roadmap.synthetic: determinism, checks, formats, and loader sharding."""
from __future__ import annotations

import dataclasses
import pickle
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from roadmap.data import (
    DataError,
    build_datasets,
    build_loaders,
    build_transforms,
    synthetic,
    validate_data,
)
from roadmap.recipes import CLASSIC, MODERN
from roadmap.spec import DataSpec, SpecError

SMALL = DataSpec(image_size=32, train_size=96, val_size=33)


# ------------------------------------------------------------------------------------------- synthetic


def test_render_is_a_pure_function_of_seed_split_and_index():
    first = synthetic.render(7, "train", 12, 10, 32)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, synthetic.render(7, "train", 12, 10, 32))
    assert not np.array_equal(first, synthetic.render(8, "train", 12, 10, 32))
    assert not np.array_equal(first, synthetic.render(7, "val", 12, 10, 32))
    images = synthetic.SyntheticImages(10, 20, 32, generation_seed=7, split="train")
    image, label = images[12]
    assert image.mode == "RGB" and image.size == (32, 32) and label == 2
    assert np.array_equal(np.asarray(image), first)
    uncached = synthetic.SyntheticImages(10, 20, 32, generation_seed=7, split="train", cache_bytes=0)
    assert np.array_equal(np.asarray(uncached[12][0]), first)


def test_labels_are_balanced():
    assert Counter(synthetic.SyntheticImages(10, 1000, 8, 0, "train").targets) == {c: 100 for c in range(10)}
    counts = Counter(synthetic.SyntheticImages(7, 100, 8, 0, "val").targets)
    assert sorted(counts) == list(range(7)) and set(counts.values()) == {14, 15}


def test_class_names_and_their_limit():
    assert synthetic.class_names(3) == ("disc", "square", "triangle")
    assert len(set(synthetic.class_names(synthetic.MAX_CLASSES))) == synthetic.MAX_CLASSES == 31
    with pytest.raises(DataError, match="num_classes=32 is not valid for synthetic data; choose 2 to 31"):
        validate_data(DataSpec(num_classes=32))
    validate_data(DataSpec(num_classes=31))


def _mean_colours(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([synthetic.render(0, split, index, 10, 32) for index in range(count)])
    return images.reshape(count, -1, 3).mean(1) / 255, np.arange(count) % 10


def test_mean_colour_does_not_reveal_the_class():
    train_colours, train_labels = _mean_colours("train", 500)
    val_colours, val_labels = _mean_colours("val", 500)
    class_means = np.stack([train_colours[train_labels == c].mean(0) for c in range(10)])
    predicted = np.linalg.norm(val_colours[:, None] - class_means[None], axis=2).argmin(1)
    accuracy = (predicted == val_labels).mean()
    assert accuracy < 2 * 0.1, f"nearest-class-mean on mean RGB reaches {accuracy:.2f}"


def test_structure_does_reveal_the_class():
    # Horizontal stripes (class 5) vary along y, vertical stripes (class 6) along x.
    def gradient_ratio(index: int) -> float:
        pixels = synthetic.render(0, "val", index, 10, 32).astype(float)
        return np.abs(np.diff(pixels, axis=0)).mean() / np.abs(np.diff(pixels, axis=1)).mean()

    assert all(gradient_ratio(5 + 10 * k) > 1.25 for k in range(50))
    assert all(gradient_ratio(6 + 10 * k) < 1 / 1.25 for k in range(50))


# ----------------------------------------------------------------------------------- datasets, shapes


@pytest.mark.parametrize("recipe", [CLASSIC, MODERN], ids=lambda r: r.name)
@pytest.mark.parametrize("image_size", [32, 48])
def test_synthetic_items_after_transforms(recipe, image_size):
    datasets = build_datasets(DataSpec(image_size=image_size, train_size=50, val_size=20), recipe)
    assert datasets.description == f"synthetic (10 classes, 50/20 images, {image_size} px)"
    assert (datasets.num_classes, datasets.kind, datasets.class_names[:2]) == (10, "synthetic", ("disc", "square"))
    assert datasets.random_erasing == recipe.random_erasing
    for split in (datasets.train, datasets.val):
        image, label = split[3]
        assert image.shape == (3, image_size, image_size) and image.dtype == torch.uint8
        assert label == 3 and isinstance(label, int)


def test_loader_batches_are_normalized_on_the_device():
    datasets = build_datasets(SMALL, CLASSIC)
    _, val_loader = build_loaders(datasets, 8, workers=0, seed=0, device="cpu")
    images, labels = next(iter(val_loader))
    assert images.dtype == torch.float32 and images.shape == (8, 3, 32, 32) and labels.tolist() == list(range(8))
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    expected = (datasets.val[2][0].float() / 255 - mean) / std
    torch.testing.assert_close(images[2], expected)


def test_random_erasing_is_a_function_of_seed_epoch_and_batch_and_leaves_global_generators_alone():
    datasets = build_datasets(SMALL, dataclasses.replace(MODERN, random_erasing=1.0))
    train_loader, _ = build_loaders(datasets, 16, workers=0, seed=1)
    train_loader.sampler.set_epoch(0)
    erased = next(iter(train_loader))[0]
    keys = list(train_loader.sampler)[:16]
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    clean = torch.stack([(datasets.train[key][0].float() / 255 - mean) / std for key in keys])
    changed = ((erased - clean).abs() > 1e-4).any(dim=1)  # (batch, h, w): erased pixels
    assert all(changed[i].any() for i in range(16)), "probability 1 erases a patch of every image"
    assert all(not changed[i].all() for i in range(16)), "a patch, not the whole image"
    states = random.getstate(), torch.get_rng_state()
    assert torch.equal(next(iter(train_loader))[0], erased)
    assert random.getstate() == states[0] and torch.equal(torch.get_rng_state(), states[1])


def test_transformed_items_are_kept_in_the_training_process_within_the_budget():
    datasets = build_datasets(SMALL, MODERN)
    first = datasets.train[(5, 1234)]
    assert datasets.train[(5, 1234)][0] is first[0]  # kept: the augmentations ran once
    assert datasets.train[5][0] is not datasets.train[5][0]  # an unseeded random transform is never kept
    assert datasets.val[5][0] is datasets.val[5][0]  # the eval transform is deterministic
    one_item = first[0].nbytes
    assert datasets.train.kept_bytes == one_item and datasets.val.kept_bytes == one_item
    datasets.train.keep_bytes = 2 * one_item
    for index in range(4):
        datasets.train[(index, 99)]
    assert datasets.train.kept_bytes == 2 * one_item
    assert datasets.train[(3, 99)][0] is not datasets.train[(3, 99)][0]  # over the budget: transformed again
    assert torch.equal(datasets.train[(3, 99)][0], datasets.train[(3, 99)][0])


def test_seeded_item_is_repeatable_and_leaves_global_generators_alone():
    datasets = build_datasets(SMALL, MODERN)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = datasets.train[(5, 1234)][0]
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert torch.equal(first, datasets.train[(5, 1234)][0])
    assert not torch.equal(first, datasets.train[(5, 1235)][0])


def test_posterize_at_full_magnitude_gives_black_instead_of_failing():
    train_transform, _ = build_transforms(MODERN, 32)
    rand_augment = next(step for step in train_transform.transforms if hasattr(step, "ops"))
    posterize = next(op for op in rand_augment.ops if op.name == "PosterizeIncreasing")
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0
    image = Image.fromarray(synthetic.render(0, "train", 0, 10, 32))
    assert np.asarray(posterize(image)).max() == 0
    posterize.magnitude = 5  # 2 bits: multiples of 64
    assert set(np.unique(np.asarray(posterize(image)))) <= {0, 64, 128, 192}


# ------------------------------------------------------------------------------------------ ImageFolder


def _write_tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """root/<split>/<class>/<n>.png, tiny images of a colour per class."""
    for split, classes in layout.items():
        for class_index, (name, count) in enumerate(classes.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for n in range(count):
                colour = (40 * class_index, 10 * n, 200)
                Image.new("RGB", (12, 10), colour).save(root / split / name / f"{n}.png")
    return root


GOOD_TREE = {"train": {"cat": 4, "dog": 3, "eel": 2}, "val": {"cat": 2, "dog": 1, "eel": 1}}


def test_imagefolder_tree_loads_with_its_classes_and_counts(tmp_path):
    root = _write_tree(tmp_path / "tree", GOOD_TREE)
    spec = DataSpec(source=f"imagefolder:{root}", image_size=16)
    validate_data(spec)
    datasets = build_datasets(spec, CLASSIC)
    assert datasets.class_names == ("cat", "dog", "eel") and datasets.num_classes == 3
    assert (len(datasets.train), len(datasets.val)) == (9, 4)
    assert datasets.description == f"imagefolder {root} (3 classes, 9/4 images, 16 px)"
    assert Counter(label for _, label in (datasets.train[i] for i in range(9))) == {0: 4, 1: 3, 2: 2}
    assert datasets.val[3][0].shape == (3, 16, 16) and datasets.val[3][1] == 2


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return path


BAD_TREES = {
    "missing path": (lambda root: root / "nowhere", "does not exist"),
    "a file": (lambda root: _touch(root / "file.txt"), "is not a directory"),
    "no train": (lambda root: _write_tree(root, {"val": {"cat": 1}}), "has no train/ folder"),
    "no val": (lambda root: _write_tree(root, {"train": {"cat": 1}}), "has no val/ folder"),
    "empty split": (lambda root: _mkdirs(_write_tree(root, {"train": {"cat": 1}}) / "val"), "has no class folders"),
    "class without images": (
        lambda root: _touch(_write_tree(root, GOOD_TREE) / "val" / "fox" / "notes.txt").parents[2],
        "fox has no images",
    ),
    "class missing from val": (
        lambda root: _write_tree(root, {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1}}),
        "class 'dog' is in",
    ),
    "class missing from train": (
        lambda root: _write_tree(root, {"train": {"cat": 1}, "val": {"cat": 1, "yak": 1}}),
        "class 'yak' is in",
    ),
    "unreadable image": (
        lambda root: _corrupt(_write_tree(root, GOOD_TREE) / "train" / "dog" / "1.png").parents[2],
        "unreadable image .*dog/1.png",
    ),
}


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path.parent


@pytest.mark.parametrize("case", BAD_TREES, ids=str)
def test_validate_data_names_each_imagefolder_problem(tmp_path, case):
    make, message = BAD_TREES[case]
    root = make(tmp_path)
    with pytest.raises(DataError, match=message) as caught:
        validate_data(DataSpec(source=f"imagefolder:{root}"))
    assert "\n" not in str(caught.value) and isinstance(caught.value, SpecError)


# With workers, torch's DataLoader takes ~5 s per worker to shut down after a worker raised: slow.
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_corrupt_image_mid_epoch_names_the_file(tmp_path, workers):
    root = _write_tree(tmp_path / "tree", GOOD_TREE)
    broken = _corrupt(root / "train" / "eel" / "0.png")
    datasets = build_datasets(DataSpec(source=f"imagefolder:{root}", image_size=8), CLASSIC)
    train_loader, _ = build_loaders(datasets, 3, workers=workers, seed=0)
    with pytest.raises(DataError) as caught:
        for _ in train_loader:
            pass
    assert str(caught.value).startswith(f"unreadable image {broken}: ")
    assert "\n" not in str(caught.value)


def test_dataerror_from_a_worker_keeps_the_one_line_message():
    relayed = "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n" \
              '  File "x.py", line 1\nroadmap.data.DataError: unreadable image /a/b.png: broken\n'
    assert str(DataError(relayed)) == "unreadable image /a/b.png: broken"


# ------------------------------------------------------------------------------------------------ CIFAR


def _write_cifar(root: Path, kind: str, train_count: int = 20, test_count: int = 10) -> Path:
    """A tiny copy in the on-disk format of the official python archives (not their MD5)."""
    rng = np.random.default_rng(0)
    classes = 10 if kind == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)

    def batch(count: int) -> dict:
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, classes, count)]
        if kind == "cifar10":
            return {"batch_label": "fake", "data": data, "labels": labels, "filenames": [""] * count}
        return {"data": data, "fine_labels": labels, "coarse_labels": [0] * count, "filenames": [""] * count}

    if kind == "cifar10":
        files = {f"data_batch_{n}": batch(train_count // 5) for n in range(1, 6)} | {"test_batch": batch(test_count)}
        files["batches.meta"] = {"label_names": [f"class{n}" for n in range(10)], "num_vis": 3072}
    else:
        files = {"train": batch(train_count), "test": batch(test_count)}
        files["meta"] = {"fine_label_names": [f"fine{n}" for n in range(100)], "coarse_label_names": ["all"]}
    for name, content in files.items():
        (folder / name).write_bytes(pickle.dumps(content))
    return folder


@pytest.mark.parametrize("kind, classes, first_name", [("cifar10", 10, "class0"), ("cifar100", 100, "fine0")])
def test_fake_cifar_copies_load(tmp_path, kind, classes, first_name):
    folder = _write_cifar(tmp_path, kind)
    for path in (tmp_path, folder):  # PATH may name the parent or the folder itself
        spec = DataSpec(source=f"{kind}:{path}", image_size=32)
        validate_data(spec)
        datasets = build_datasets(spec, MODERN)
        assert (datasets.num_classes, datasets.class_names[0]) == (classes, first_name)
        assert (len(datasets.train), len(datasets.val)) == (20, 10)
        image, label = datasets.train[4]
        assert image.shape == (3, 32, 32) and 0 <= label < classes
    title = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
    assert datasets.description == f"{title} at {tmp_path} ({classes} classes, 20/10 images, 32 px)"


def test_cifar_problems_are_named(tmp_path):
    spec = DataSpec(source=f"cifar10:{tmp_path}")
    with pytest.raises(DataError, match="data_batch_1 is missing; pass --download"):
        validate_data(spec)
    with pytest.raises(DataError, match="pass --download"):
        build_datasets(spec, CLASSIC)
    folder = _write_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="unreadable CIFAR file .*data_batch_3"):
        validate_data(spec)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing; pass --download"):
        validate_data(spec)
    validate_data(DataSpec(source=f"cifar10:{tmp_path}"), download=True)  # the download comes later


# ---------------------------------------------------------------------------------------------- loaders


def _order(loader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)
    return [index for index, _ in loader.sampler]


def test_train_shards_are_disjoint_and_a_function_of_seed_and_epoch():
    datasets = build_datasets(SMALL, CLASSIC)
    ranks = [build_loaders(datasets, 8, workers=0, seed=3, rank=rank, world_size=2)[0] for rank in (0, 1)]
    shards = [_order(loader, 0) for loader in ranks]
    assert len(shards[0]) == len(shards[1]) == 48 and not set(shards[0]) & set(shards[1])
    assert all(len(loader) == 6 for loader in ranks)
    assert shards[0] == _order(build_loaders(datasets, 8, workers=0, seed=3, rank=0, world_size=2)[0], 0)
    assert shards[0] != _order(ranks[0], 1)
    assert shards[0] != _order(build_loaders(datasets, 8, workers=0, seed=4, rank=0, world_size=2)[0], 0)


def test_val_shards_cover_every_image_exactly_once():
    datasets = build_datasets(SMALL, CLASSIC)
    seen = [index for rank in (0, 1) for index in build_loaders(datasets, 8, workers=0, seed=0, rank=rank,
                                                                 world_size=2)[1].sampler]
    assert sorted(seen) == list(range(33))
    single_val = build_loaders(datasets, 8, workers=0, seed=0)[1]
    labels = torch.cat([labels for _, labels in single_val])
    assert labels.tolist() == [index % 10 for index in range(33)]


def test_same_seed_and_epoch_give_the_same_batches_with_or_without_workers():
    datasets = build_datasets(SMALL, MODERN)

    def first_batch(workers: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader = build_loaders(datasets, 16, workers=workers, seed=1, world_size=1)[0]
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))

    images, labels = first_batch(0, 2)
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    for workers in (0, 2):
        again_images, again_labels = first_batch(workers, 2)
        assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    assert not torch.equal(images, first_batch(0, 3)[0])


@pytest.mark.parametrize("arguments, message", [
    (dict(batch_size=64, world_size=2), "the train split has 96 images, fewer than one batch \\(64 x 2 processes\\)"),
    (dict(batch_size=8, rank=2, world_size=2), "rank=2 is not valid for world_size=2; choose 0 to 1"),
    (dict(batch_size=0), "batch_size=0 is not valid"),
])
def test_build_loaders_rejects_impossible_settings(arguments, message):
    datasets = build_datasets(SMALL, CLASSIC)
    batch_size = arguments.pop("batch_size")
    with pytest.raises(DataError, match=message):
        build_loaders(datasets, batch_size, workers=0, seed=0, **arguments)
