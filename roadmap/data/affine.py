"""RandAugment's shears and translations, compiled with numba: Pillow's pixels, 2-4x faster.

timm's shear_x/y and translate_x/y call Pillow's `Image.transform(AFFINE, resample=BICUBIC)`, whose
generic engine evaluates a 4x4 filter in doubles through two function pointers per output pixel, although
for these matrices one row (or column) of 4 taps decides each pixel. At 160 px that is 1.5-3 ms each on
one core of this machine, against ~0.3 ms for a whole crop and resize.

`shift_bicubic` repeats Pillow's arithmetic (libImaging/Geometry.c: affine_transform, BICUBIC_HEAD,
BICUBIC_BODY, bicubic_filter32RGB) operation for operation in double precision, and skips only the taps
whose weight is exactly 0 there (0 * finite adds nothing), so its pixels are Pillow's: tests compare them
over many matrices. Rotations keep Pillow's engine: their 16 taps, compiled the same way, were no faster.
numba is optional: without it the same function runs as Python, and the ops stay Pillow's.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from timm.data import auto_augment

try:
    import numba
except ImportError:  # an optional accelerator: the same pixels come from Pillow without it
    numba = None


def _cubic(v1: float, v2: float, v3: float, v4: float, d: float) -> float:
    # Pillow's BICUBIC macro (a cubic convolution with a = -1), term for term.
    p1 = v2
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


def _shift_rows(source: np.ndarray, a0: float, a1: float, a2: float, out: np.ndarray, fill: np.ndarray) -> None:
    """Pillow's affine BICUBIC for a matrix (a0, a1, a2, 0, 1, 0) on (h, w, 3) uint8: each output pixel reads
    its own row at x_in = a0 * (x + 0.5) + a1 * (y + 0.5) + a2, and is `fill` where x_in is outside the
    image. Pillow's vertical weights are then (0, 1, 0, 0) exactly and its 0 * (finite) terms add nothing,
    so only the row's 4 taps are read. Per row, the taps are found first, then each band is filtered in a
    loop free of the coordinate arithmetic."""
    width, count = source.shape[1], out.shape[1]
    weight, inside = np.empty(count), np.empty(count, np.bool_)
    taps = np.empty((4, count), np.int64)
    for y in range(out.shape[0]):
        y_centre = y + 0.5
        for x in range(count):
            x_in = a0 * (x + 0.5) + a1 * y_centre + a2
            inside[x] = 0.0 <= x_in < width
            x_in -= 0.5
            column = math.floor(x_in)
            weight[x] = x_in - column
            for tap in range(4):
                taps[tap, x] = min(max(column - 1 + tap, 0), width - 1)
        line = source[y]
        for band in range(3):
            for x in range(count):
                value = _cubic(float(line[taps[0, x], band]), float(line[taps[1, x], band]),
                               float(line[taps[2, x], band]), float(line[taps[3, x], band]), weight[x])
                value = min(max(value, 0.0), 255.0)  # Pillow: <= 0 gives 0, >= 255 gives 255, else truncated
                out[y, x, band] = np.uint8(int(value)) if inside[x] else fill[band]


if numba is not None:
    _cubic = numba.njit(inline="always", cache=True)(_cubic)
    _shift_rows = numba.njit(cache=True, nogil=True)(_shift_rows)


def shift_bicubic(image: Image.Image, matrix: tuple[float, ...], fillcolor: tuple[int, ...]) -> Image.Image:
    """`image.transform(image.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fillcolor)`; a
    matrix that moves pixels along rows, (a0, a1, a2, 0, 1, 0), or columns, (1, 0, 0, a3, a4, a5), reads 4 taps."""
    source = np.asarray(image)
    out = np.empty_like(source)
    fill = np.asarray(fillcolor[:3], dtype=np.uint8)
    a0, a1, a2, a3, a4, a5 = (float(value) for value in matrix[:6])
    if (a3, a4, a5) == (0.0, 1.0, 0.0):
        _shift_rows(source, a0, a1, a2, out, fill)
    elif (a0, a1, a2) == (1.0, 0.0, 0.0):
        # Along columns: the same on the transposed image, y_in = a4 * (y + 0.5) + a3 * (x + 0.5) + a5
        # (a sum of two products is the same in either order).
        _shift_rows(np.ascontiguousarray(source.transpose(1, 0, 2)), a4, a3, a5, out.transpose(1, 0, 2), fill)
    else:
        raise ValueError(f"matrix {matrix} moves pixels along both axes")
    return Image.fromarray(out)


def _matrix(name: str, image: Image.Image, value: float) -> tuple[float, ...]:
    """The affine matrix timm's op `name` hands to Pillow for `value`."""
    width, height = image.size
    return {"shear_x": (1, value, 0, 0, 1, 0), "shear_y": (1, 0, 0, value, 1, 0),
            "translate_x_rel": (1, 0, value * width, 0, 1, 0), "translate_y_rel": (1, 0, 0, 0, 1, value * height),
            "translate_x_abs": (1, 0, value, 0, 1, 0), "translate_y_abs": (1, 0, 0, 0, 1, value)}[name]


def compiled_op(name: str) -> Callable:
    """timm's auto_augment op `name`, with its bicubic RGB case computed by `shift_bicubic`."""
    original = getattr(auto_augment, name)

    def op(image: Image.Image, value: float, **kwargs) -> Image.Image:
        resample = kwargs.get("resample")
        if image.mode == "RGB" and resample == Image.BICUBIC and isinstance(kwargs.get("fillcolor"), tuple):
            return shift_bicubic(image, _matrix(name, image, value), kwargs["fillcolor"])
        return original(image, value, **kwargs)

    op.__name__ = op.__qualname__ = name
    return op


# timm's geometric ops that compiled_op replaces when numba is installed. Not rotate: its 16 taps per pixel,
# compiled the same way, took longer than Pillow's.
GEOMETRIC_OPS = ("shear_x", "shear_y", "translate_x_rel", "translate_y_rel", "translate_x_abs",
                 "translate_y_abs")
