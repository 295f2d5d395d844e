"""The numerics a training or a benchmark runs under: deterministic kernels on the CPU; TF32 and cuDNN autotuning
on CUDA, set through the installed torch's API and restored afterwards."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def training_numerics(device: torch.device) -> Iterator[None]:
    """Deterministic kernels where they are free (the CPU; on CUDA they cost speed). On CUDA:

    - fp32 matmuls and convolutions on TF32 tensor cores, as PyTorch 1.8 ran the paper's fp32 trainings (the
      presets' "fp32 as the original runs, TF32 on CUDA"); under bf16 autocast it covers the ops left in fp32;
    - `cudnn.benchmark`: cuDNN times its algorithms for each new input shape and keeps the fastest, as timm's
      train.py, ConvNeXt's main.py and torchvision's reference set it. The shapes of a training are fixed (full
      batches; evaluation pads its last batch when compiled), so each shape is tuned once. It picks algorithms
      by timing, so CUDA runs are not bit-reproducible (they were not before either: atomics in the backward).

    Everything is set back on exit, so that a caller's own settings survive a study step or a benchmark.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    saved_cuda = _cuda_settings()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        _set_cuda_settings(tf32=True, cudnn_benchmark=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        _restore_cuda_settings(saved_cuda)


# torch >= 2.9 sets TF32 per backend and operation through `fp32_precision` ("tf32" or "ieee"); reading or
# setting the older `allow_tf32` flags after the new API was used raises a RuntimeError there, so only one of
# the two APIs is ever touched: the new one wherever it exists.
_NEW_TF32_API = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")


def _cuda_settings() -> tuple:
    if _NEW_TF32_API:
        tf32 = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    else:
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    return tf32, torch.backends.cudnn.benchmark


def _set_cuda_settings(*, tf32: bool, cudnn_benchmark: bool) -> None:
    if _NEW_TF32_API:
        precision = "tf32" if tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def _restore_cuda_settings(saved: tuple) -> None:
    (matmul, conv), benchmark = saved
    if _NEW_TF32_API:
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.conv.fp32_precision = conv
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
    torch.backends.cudnn.benchmark = benchmark


def cuda_numerics_description() -> str:
    """What `training_numerics` sets on CUDA, for the header of a benchmark's output."""
    return "TF32 matmuls and convolutions, cudnn.benchmark on"
