"""Model FLOPs utilization: the FLOPs a network's MACs imply at a measured img/s, over the GPU's dense peak."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import SpecError


@dataclass(frozen=True)
class GpuPeak:
    """Dense (no 2:4 sparsity) tensor-core peaks of one GPU, in TFLOPS (10^12 FLOP/s)."""

    # What torch.cuda.get_device_name() contains for this GPU, e.g. "H100 PCIe" in "NVIDIA H100 PCIe".
    name_contains: str
    # BF16 inputs with FP32 accumulation: what autocast's matmuls and convolutions run.
    bf16_tflops: float
    # TF32 tensor cores: what fp32 runs use on CUDA here (training_numerics turns TF32 on).
    tf32_tflops: float
    # Where the numbers come from (NVIDIA's published tables list sparse figures at twice these).
    source: str


# Most specific names first: "H100 PCIe" must match before "H100".
KNOWN_GPUS = (
    GpuPeak("H100 PCIe", 756.5, 378.0, "NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 PCIe column"),
    GpuPeak("H100 NVL", 835.5, 417.5, "NVIDIA H100 NVL datasheet (1,671 / 835 TFLOPS with sparsity, halved)"),
    GpuPeak("H100", 989.4, 494.7, "NVIDIA H100 Tensor Core GPU Architecture whitepaper, H100 SXM5 column"),
    GpuPeak("H200 NVL", 835.5, 417.5, "NVIDIA H200 datasheet, H200 NVL column (1,671 / 835 with sparsity, halved)"),
    GpuPeak("H200", 989.4, 494.7, "NVIDIA H200 datasheet, H200 SXM column (1,979 / 989 with sparsity, halved; "
                                  "the H100 SXM5's compute)"),
    GpuPeak("A100", 312.0, 156.0, "NVIDIA A100 Tensor Core GPU datasheet (SXM4 and PCIe alike)"),
    GpuPeak("L40S", 362.05, 183.0, "NVIDIA L40S datasheet (733 / 366 TFLOPS with sparsity, halved)"),
    GpuPeak("RTX 4090", 165.2, 82.6, "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 "
                                     "(BF16 with FP32 accumulate)"),
    GpuPeak("RTX 3090", 71.0, 35.6, "NVIDIA Ampere GA102 GPU architecture whitepaper, GeForce RTX 3090 "
                                    "(BF16 with FP32 accumulate)"),
)


@dataclass(frozen=True)
class Peak:
    """The peak an MFU figure is divided by, and where it came from (printed beside every MFU)."""

    tflops: float  # NaN: unknown, MFU is not reported
    description: str

    @property
    def known(self) -> bool:
        return math.isfinite(self.tflops)


def find_peak(device_name: str, precision: str, override_tflops: float | None = None) -> Peak:
    """The dense peak for `precision` ("bf16" or "fp32", which runs on TF32 on CUDA) of the GPU named
    `device_name`; `override_tflops` (--peak-tflops) wins. An unknown GPU (or the CPU) gives an unknown peak."""
    if override_tflops is not None:
        if isinstance(override_tflops, bool) or not isinstance(override_tflops, (int, float)) or \
                not math.isfinite(override_tflops) or override_tflops <= 0:
            raise SpecError(f"peak_tflops={override_tflops!r} is not valid; a number of TFLOPS > 0")
        return Peak(float(override_tflops), f"{override_tflops:g} TFLOPS given with --peak-tflops")
    kind = "BF16" if precision == "bf16" else "TF32"
    for gpu in KNOWN_GPUS:
        if _names(device_name, gpu.name_contains):
            tflops = gpu.bf16_tflops if precision == "bf16" else gpu.tf32_tflops
            return Peak(tflops, f"{gpu.name_contains} dense {kind} tensor-core peak {tflops:g} TFLOPS ({gpu.source})")
    known = ", ".join(gpu.name_contains for gpu in KNOWN_GPUS)
    return Peak(math.nan, f"no known {kind} peak for {device_name!r} (known: {known}); give one with --peak-tflops")


def _names(device_name: str, model: str) -> bool:
    """Whether `device_name` names `model` as a whole word ("A100" in "NVIDIA A100-SXM4-80GB"), not another
    model that starts with it ("RTX 3090" is not "RTX 3090 Ti")."""
    return re.search(rf"(?<!\w){re.escape(model)}(?!\w|\s*Ti\b)", device_name, re.IGNORECASE) is not None


def model_tflops(gmacs_per_image: float, img_per_s: float, *, training: bool) -> float:
    """Model FLOPs per second in TFLOPS: 2 FLOPs per multiply-accumulate in the forward pass, and a backward
    pass of twice the forward's (gradients for inputs and for weights): 6 x MACs per trained image,
    2 x MACs per evaluated one. Only conv and linear MACs count (roadmap.models.complexity), as in the paper."""
    flops_per_mac = 6 if training else 2
    return flops_per_mac * gmacs_per_image * 1e9 * img_per_s / 1e12


def mfu_pct(gmacs_per_image: float, img_per_s: float, peak: Peak, *, training: bool) -> float:
    """Model FLOPs utilization in % of `peak`; NaN when the peak is unknown."""
    if not peak.known:
        return math.nan
    return 100 * model_tflops(gmacs_per_image, img_per_s, training=training) / peak.tflops
