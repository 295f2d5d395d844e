"""The built-in synthetic data set: shapes and textures on random colours, drawn from (seed, split, index)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import SpecError

# A class is a (shape, fill) pair: the shape decides WHERE the foreground colour goes, the fill HOW it
# covers that region. "full" covers the whole frame (a pure texture class). The first ten are the
# most distinct and make the default set; the rest combine every shape with every textured fill.
SHAPES = ("full", "disc", "square", "triangle", "cross", "ring", "frame", "x")
FILLS = ("solid", "h_stripes", "v_stripes", "checker")
_DEFAULT_TEN = (
    ("disc", "solid"), ("square", "solid"), ("triangle", "solid"), ("cross", "solid"), ("ring", "solid"),
    ("full", "h_stripes"), ("full", "v_stripes"), ("full", "checker"), ("frame", "solid"), ("x", "solid"),
)
CLASSES: tuple[tuple[str, str], ...] = _DEFAULT_TEN + tuple(
    (shape, fill) for fill in FILLS[1:] for shape in SHAPES[1:] if (shape, fill) not in _DEFAULT_TEN
)
MAX_CLASSES = len(CLASSES)  # 31: ("full", "solid") would be a blank image
SPLITS = ("train", "val")

# Nuisance ranges, in units of the half image side (the image spans [-1, 1]).
_CENTRE_RANGE = 0.25  # shape centre offset from the middle, each axis
_SCALE_RANGE = (0.5, 0.8)  # shape radius
_ROTATION_DEG = 15.0  # shape rotation and stripe tilt, either way
_PERIOD_RANGE = (0.3, 0.55)  # stripe / checker period
_MIN_COLOUR_DISTANCE = 0.45  # RGB distance (0..1 per channel) between background and foreground
_GRADIENT_RANGE = 0.15  # background shading amplitude per channel
_NOISE_RANGE = (0.01, 0.06)  # pixel noise standard deviation (uniform noise: cheaper than Gaussian)


def class_names(num_classes: int) -> tuple[str, ...]:
    """Human names of the first `num_classes` classes, e.g. "disc", "h_stripes", "checker ring"."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise SpecError(f"num_classes={num_classes} is not valid for synthetic data; choose 2 to {MAX_CLASSES}")
    names = []
    for shape, fill in CLASSES[:num_classes]:
        names.append(shape if fill == "solid" else fill if shape == "full" else f"{fill} {shape}")
    return tuple(names)


def label_of(index: int, num_classes: int) -> int:
    """Labels cycle through the classes, so every class has the same count (within one)."""
    return index % num_classes


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres in [-1, 1]; y grows downwards as in the image.
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis, indexing="xy")


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = math.cos(angle), math.sin(angle)
    return cos * x + sin * y, -sin * x + cos * y


def _shape_distance(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance-like field in the shape's unit frame: > 0 inside, < 0 outside."""
    if shape == "disc":
        return 1.0 - np.hypot(x, y)
    if shape == "square":
        return 0.8 - np.maximum(np.abs(x), np.abs(y))
    if shape == "triangle":  # equilateral, pointing up, inradius 0.55: min over the three edges
        return np.minimum(np.minimum(0.55 - y, 0.55 + 0.866 * x + 0.5 * y), 0.55 - 0.866 * x + 0.5 * y)
    if shape in ("cross", "x"):
        if shape == "x":
            x, y = _rotate(x, y, math.pi / 4)
        ax, ay = np.abs(x), np.abs(y)
        return np.maximum(np.minimum(0.95 - ax, 0.27 - ay), np.minimum(0.27 - ax, 0.95 - ay))
    if shape == "ring":
        return 0.25 - np.abs(np.hypot(x, y) - 0.7)
    if shape == "frame":
        return 0.2 - np.abs(np.maximum(np.abs(x), np.abs(y)) - 0.65)
    raise SpecError(f"shape={shape!r} is not valid; choose one of: {', '.join(SHAPES)}")


def _fill(fill: str, x: np.ndarray, y: np.ndarray, period: float, phase: float) -> np.ndarray:
    """Foreground coverage in [0, 1] of a fill pattern (1 everywhere for "solid")."""
    if fill == "solid":
        return np.ones_like(x)
    wave = 2 * math.pi / period
    if fill == "h_stripes":
        signal = np.sin(wave * y + phase)
    elif fill == "v_stripes":
        signal = np.sin(wave * x + phase)
    else:  # checker
        signal = np.sin(wave * x + phase) * np.sin(wave * y + phase)
    return np.clip(signal * 3 + 0.5, 0.0, 1.0)  # steep but anti-aliased edges


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Drawn independently of the class, so mean colour and brightness say nothing about it.
    while True:
        background, foreground = rng.random((2, 3), dtype=np.float32)
        if math.dist(background.tolist(), foreground.tolist()) >= _MIN_COLOUR_DISTANCE:
            return background, foreground


def render(generation_seed: int, split: str, index: int, num_classes: int, size: int) -> np.ndarray:
    """Image `index` of `split` as a (size, size, 3) uint8 array; a pure function of its arguments."""
    shape, fill = CLASSES[label_of(index, num_classes)]
    rng = np.random.default_rng([generation_seed, SPLITS.index(split), index])
    u, v = _grid(size)
    # One draw of every nuisance parameter, as Python floats so that float32 arrays stay float32.
    draws = iter(rng.random(11).tolist())

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * next(draws)

    centre_x, centre_y = uniform(-_CENTRE_RANGE, _CENTRE_RANGE), uniform(-_CENTRE_RANGE, _CENTRE_RANGE)
    scale = uniform(*_SCALE_RANGE)
    angle = math.radians(uniform(-_ROTATION_DEG, _ROTATION_DEG))
    period, phase = uniform(*_PERIOD_RANGE), uniform(0, 2 * math.pi)
    gradient_angle, noise = uniform(0, 2 * math.pi), uniform(*_NOISE_RANGE)
    gradient = np.array([uniform(-_GRADIENT_RANGE, _GRADIENT_RANGE) for _ in range(3)], dtype=np.float32)
    background, foreground = _colours(rng)

    if shape == "full":
        coverage = _fill(fill, *_rotate(u, v, angle), period, phase)
    else:
        local_x, local_y = _rotate((u - centre_x) / scale, (v - centre_y) / scale, angle)
        pixels_per_unit = scale * size / 2
        alpha = np.clip(_shape_distance(shape, local_x, local_y) * pixels_per_unit + 0.5, 0.0, 1.0)
        coverage = alpha * _fill(fill, local_x, local_y, period / scale, phase)

    shading = math.cos(gradient_angle) * u + math.sin(gradient_angle) * v
    image = background + shading[..., None] * gradient
    image += coverage[..., None] * (foreground - image)
    image *= 255.0
    # Uniform noise of standard deviation `noise` (in 0..1 units) from raw random bytes.
    uniform_bytes = np.frombuffer(rng.bytes(image.size), dtype=np.uint8).reshape(image.shape)
    image += (uniform_bytes.astype(np.float32) - 127.5) * (noise * math.sqrt(12))
    image += 0.5
    return np.clip(image, 0.0, 255.0, out=image).astype(np.uint8)


class SyntheticImages(Dataset):
    """`length` synthetic images of one split as (PIL RGB image, label); nothing is downloaded.

    When the whole split fits in `cache_bytes` (uint8), it is rendered once here, so that DataLoader
    workers forked later share it instead of each rendering it again; otherwise each item is rendered
    when asked for.
    """

    def __init__(self, num_classes: int, length: int, size: int, generation_seed: int, split: str,
                 cache_bytes: int = 256 * 2**20):
        if split not in SPLITS:
            raise SpecError(f"split={split!r} is not valid; choose one of: {', '.join(SPLITS)}")
        self.classes = list(class_names(num_classes))
        self.num_classes, self.length, self.size = num_classes, length, size
        self.generation_seed, self.split = generation_seed, split
        self.targets = [label_of(index, num_classes) for index in range(length)]
        self._cache: np.ndarray | None = None
        if length * size * size * 3 <= cache_bytes:
            self._cache = np.stack([self._render(index) for index in range(length)])

    def __len__(self) -> int:
        return self.length

    def _render(self, index: int) -> np.ndarray:
        return render(self.generation_seed, self.split, index, self.num_classes, self.size)

    def pixels(self, index: int) -> np.ndarray:
        """Image `index` as a (size, size, 3) uint8 array."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for {self.length} synthetic images")
        return self._render(index) if self._cache is None else self._cache[index]

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.pixels(index)), self.targets[index]
