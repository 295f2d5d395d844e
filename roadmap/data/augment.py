"""A recipe's transforms applied to stored (height, width, 3) uint8 arrays: the same random draws, less work.

The train transforms start with timm's RandomResizedCropAndInterpolation and torchvision's
RandomHorizontalFlip. On a stored array, ArrayTransform draws their parameters with their own code (the
same generator calls in the same order, so the later augmentations draw what they would have drawn),
then does the work on the array instead of on PIL images:
  - the crop is a view of the array: only the cropped region is copied;
  - the resize of the crop to the training resolution is torch's antialiased uint8 resize
    (`torch.nn.functional.interpolate(antialias=True)`), a port of Pillow's algorithm (same filters, same
    support, fixed-point weights) in SIMD code: on a busy core it takes a third of Pillow's time. It
    differs from Pillow in rounding only: 1.8 % of the values, by 1 level, rarely more (tests/test_data_cache.py);
  - the flip is Pillow's, or torch's when nothing else follows (exact).
The rest of the transform (RandAugment's PIL operations, the conversion to a tensor) runs unchanged.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from timm.data.transforms import MaybePILToTensor, RandomResizedCropAndInterpolation
from torchvision.transforms import Compose, InterpolationMode, RandomHorizontalFlip
from torchvision.transforms import functional as F

# Filters torch resizes like Pillow does (antialiased when shrinking); others go through Pillow.
TORCH_RESIZE = {InterpolationMode.BILINEAR: "bilinear", InterpolationMode.BICUBIC: "bicubic"}


def resize_like_pillow(pixels: np.ndarray, size: tuple[int, int], interpolation: InterpolationMode) -> np.ndarray:
    """(height, width, 3) uint8 pixels resized to `size` (height, width) with Pillow's filter, by torch."""
    if pixels.shape[:2] == tuple(size):
        return pixels
    if interpolation not in TORCH_RESIZE:
        return np.asarray(F.resize(Image.fromarray(pixels), list(size), interpolation))
    # (1, 3, h, w) in channels-last memory: the layout of torch's vectorized uint8 kernels.
    batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    resized = torch.nn.functional.interpolate(batch, size=tuple(size), mode=TORCH_RESIZE[interpolation],
                                              antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).numpy()


class ArrayTransform:
    """`transform` (a PIL-image transform ending in a uint8 tensor) applied to a uint8 array.

    A transform that starts with timm's RandomResizedCropAndInterpolation (optionally followed by
    RandomHorizontalFlip) takes the fast path the module describes; any other one gets the whole image
    as a PIL image, so its output is exactly `transform(Image.fromarray(array))`.
    """

    def __init__(self, transform: Callable):
        self.transform = transform
        steps = list(getattr(transform, "transforms", []))
        self.crop = steps.pop(0) if steps and isinstance(steps[0], RandomResizedCropAndInterpolation) else None
        self.flip = steps.pop(0) if self.crop and steps and isinstance(steps[0], RandomHorizontalFlip) else None
        # What runs on the PIL image after the crop and flip; nothing when only the tensor conversion is left.
        self.rest = Compose(steps) if steps and not (len(steps) == 1 and isinstance(steps[0], MaybePILToTensor)) \
            else None

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        if self.crop is None:
            return self.transform(Image.fromarray(array))
        crop = self.crop
        height, width = array.shape[:2]
        # get_params reads only the image's size: a zero-stride tensor of that shape stands in for it.
        top, left, crop_height, crop_width = crop.get_params(torch.zeros(()).expand(1, height, width),
                                                             crop.scale, crop.ratio)
        interpolation = crop.interpolation
        if isinstance(interpolation, (tuple, list)):
            interpolation = random.choice(interpolation)
        region = np.array(array[top:top + crop_height, left:left + crop_width])  # a writable copy of the crop
        pixels = resize_like_pillow(region, crop.size, interpolation)
        flip = self.flip is not None and bool(torch.rand(1) < self.flip.p)  # RandomHorizontalFlip's own draw
        if self.rest is None:
            tensor = torch.from_numpy(pixels).permute(2, 0, 1)
            return tensor.flip(-1) if flip else tensor
        image = Image.fromarray(pixels)
        return self.rest(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"
