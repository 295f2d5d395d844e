"""Measured cost of a network (`--benchmark`): training and inference img/s, run-to-run noise, peak memory, MFU.

On CUDA the defaults are timm's benchmark protocol (`BenchmarkConfig.timm_protocol`), under the numerics a
training runs with (`training_numerics`: TF32, cudnn.benchmark); the CPU's are small and unchanged."""
from __future__ import annotations

import dataclasses
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..models.complexity import count_complexity
from ..models.network import build_model
from ..spec import DEVICES, PRECISIONS, choice, whole_number
from .compiled import reset_compile_cache
from .memory import reset_rss_high_water_mark
from .mfu import Peak, find_peak, mfu_pct
from .numerics import cuda_numerics_description, training_numerics

# The optimizer of every timed training step; its update costs as much as the modern recipe's.
OPTIMIZER = "adamw"
PEAK_MEMORY_CONVENTION = {
    "cuda": "torch.cuda.max_memory_allocated (MiB) from just before the model is moved to the GPU: "
    "weights, gradients, AdamW state and activations; reserved = torch.cuda.max_memory_reserved, what the "
    "caching allocator held",
    "cpu": "increase of the process's peak resident set size (MiB, getrusage ru_maxrss, peak reset through "
    "/proc/self/clear_refs) over its size at the start of the measurement: gradients, AdamW state, activations "
    "and allocator caches (with compile, the compiler's too), not the weights; it depends on the allocator "
    "(about +-10 % between like models)",
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """What one throughput measurement runs; every printed figure names these settings."""

    # "cpu" or "cuda" (the current CUDA device).
    device: str = "cpu"
    # Images per forward pass, training and evaluation alike.
    batch_size: int = 16
    # Side of the square random input images (pixels).
    image_size: int = 224
    # "fp32", or "bf16" through torch.autocast (weights and optimizer state stay fp32).
    precision: str = "fp32"
    # Weights and inputs in torch.channels_last (NHWC) memory format instead of contiguous NCHW.
    channels_last: bool = False
    # Run the model through torch.compile (default mode) before warm-up.
    compile: bool = False
    # Untimed training and evaluation iterations before timing (allocator, autotuning, compilation).
    warmup: int = 2
    # Timed repeats; throughput is their median and their spread is the run-to-run noise.
    repeats: int = 5
    # Iterations (batches) per timed repeat.
    iterations_per_repeat: int = 3
    # Outputs of the classifier (the loss needs labels below it).
    num_classes: int = 1000
    # The GPU's dense peak in TFLOPS that MFU divides by; None: looked up by GPU name (roadmap.training.mfu).
    peak_tflops: float | None = None

    @classmethod
    def timm_protocol(cls, **changes: Any) -> BenchmarkConfig:
        """timm's benchmark.py protocol, the default on CUDA: batch 256, 10 warm-up and 40 timed iterations
        (here 5 repeats x 8, so that the spread shows the noise). Small batches or few iterations would time
        kernel launches, not the GPU's arithmetic."""
        return cls(**{"device": "cuda", "batch_size": 256, "warmup": 10, "repeats": 5, "iterations_per_repeat": 8,
                      **changes})

    def __post_init__(self) -> None:
        choice("device", self.device, DEVICES)
        choice("precision", self.precision, PRECISIONS)
        for name in ("batch_size", "image_size", "repeats", "iterations_per_repeat", "num_classes"):
            whole_number(name, getattr(self, name), 1)
        whole_number("warmup", self.warmup, 0)
        if self.peak_tflops is not None:
            find_peak("", self.precision, self.peak_tflops)  # checks it
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SpecError("device='cuda' is not valid here: torch.cuda.is_available() is False")

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous (NCHW)"

    def describe(self) -> str:
        """One line naming every setting a throughput figure depends on."""
        numerics = f", {cuda_numerics_description()}" if self.device == "cuda" else ""
        return (
            f"{device_name(self.device)}, batch {self.batch_size}, {self.image_size}x{self.image_size} px, "
            f"{self.precision}, {self.memory_format} memory format, {'torch.compile' if self.compile else 'eager'}"
            f"{numerics}"
        )

    def peak(self) -> Peak:
        """The dense peak MFU is measured against: --peak-tflops, else the table's for this GPU (if known)."""
        name = torch.cuda.get_device_name() if self.device == "cuda" else "cpu"
        return find_peak(name, self.precision, self.peak_tflops)


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'' if threads == 1 else 's'})"


def spread_pct(values: list[float]) -> float:
    """Run-to-run noise: (max - min) / median, in percent."""
    return (max(values) - min(values)) / statistics.median(values) * 100


def _rss_high_water_kib() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes; there the CPU figure is only indicative).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_rss_high_water() -> None:
    """Lower the process's peak RSS to its current RSS (Linux >= 4.0).

    Where that is impossible, the CPU figure is the increase of the lifetime peak: a lower bound,
    zero when an earlier measurement in the process went higher.
    """
    reset_rss_high_water_mark()


class Workload:
    """A model, its AdamW optimizer and one fixed random batch, ready to be timed repeat by repeat.

    `measure()` uses one; benchmarks that interleave two models (A B A B ...) build one each and
    call `time_train` / `time_eval` alternately. Training updates the model's weights in place.
    """

    def __init__(self, model: nn.Module, config: BenchmarkConfig, seed: int = 0):
        self.config = config
        self.device = torch.device(config.device)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        # Fused, as the harness trains (engine.build_optimizer).
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        generator = torch.Generator().manual_seed(seed)
        shape = (config.batch_size, 3, config.image_size, config.image_size)
        self.images = torch.randn(shape, generator=generator).to(self.device, memory_format=memory_format)
        self.labels = torch.randint(0, config.num_classes, (config.batch_size,), generator=generator).to(self.device)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _train_iteration(self) -> None:
        with self._autocast():
            loss = F.cross_entropy(self.forward(self.images), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _eval_iteration(self) -> None:
        with torch.inference_mode(), self._autocast():
            self.forward(self.images)

    def warm_up(self) -> None:
        self.model.train()
        for _ in range(self.config.warmup):
            self._train_iteration()
        self.model.eval()
        for _ in range(self.config.warmup):
            self._eval_iteration()
        self._synchronize()

    def _timed(self, iteration: Callable[[], None], train: bool) -> float:
        self.model.train(train)
        self._synchronize()
        start = time.perf_counter()
        for _ in range(self.config.iterations_per_repeat):
            iteration()
        self._synchronize()  # CUDA kernels run asynchronously: wait before reading the clock.
        elapsed = time.perf_counter() - start
        return self.config.batch_size * self.config.iterations_per_repeat / elapsed

    def time_train(self) -> float:
        """One timed repeat of forward + backward + AdamW step; img/s."""
        return self._timed(self._train_iteration, train=True)

    def time_eval(self) -> float:
        """One timed repeat of inference-mode forward passes (eval mode); img/s."""
        return self._timed(self._eval_iteration, train=False)


class PeakMemory:
    """Peak memory of what runs inside the `with` block, in MiB; conventions in PEAK_MEMORY_CONVENTION.
    `reserved_mib` is CUDA's only (NaN on the CPU)."""

    def __init__(self, device: str):
        self.device = device
        self.peak_mib = self.reserved_mib = math.nan

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_rss_high_water()
            self._start_kib = _rss_high_water_kib()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
            self.reserved_mib = torch.cuda.max_memory_reserved() / 2**20
        else:
            self.peak_mib = (_rss_high_water_kib() - self._start_kib) / 2**10


def measure(model: nn.Module, config: BenchmarkConfig, gmacs: float | None = None) -> dict[str, Any]:
    """Training and evaluation throughput of `model` on random inputs, with their noise, peak memory and MFU.

    Returns train_img_per_s (forward + backward + AdamW step) and eval_img_per_s (inference-mode
    forward), each the median over `config.repeats` timed repeats after `config.warmup` untimed
    iterations; train_spread_pct and eval_spread_pct ((max - min) / median over the repeats, %);
    peak_memory_mib (see PEAK_MEMORY_CONVENTION) and, on CUDA, peak_memory_allocated_mib (the same figure)
    and peak_memory_reserved_mib (NaN on the CPU); gmacs (per image, counted here unless given);
    train_mfu_pct and eval_mfu_pct against `config.peak()` (NaN when no peak is known), with peak_tflops
    and peak_source saying which peak; and every field of `config`. It runs under the numerics of a
    training (`training_numerics`) and, compiled, from an empty dynamo cache. The model is moved to the
    device and its weights are updated by the training steps: pass a copy if they matter.
    """
    if gmacs is None:
        gmacs = count_complexity(model, config.image_size).gmacs
    peak_flops = config.peak()
    if config.compile:
        reset_compile_cache()  # each model compiles afresh, never against an earlier one's recompile budget
    with training_numerics(torch.device(config.device)), PeakMemory(config.device) as peak:
        workload = Workload(model, config)
        workload.warm_up()
        train = [workload.time_train() for _ in range(config.repeats)]
        evaluation = [workload.time_eval() for _ in range(config.repeats)]
    train_rate, eval_rate = statistics.median(train), statistics.median(evaluation)
    return {
        "train_img_per_s": train_rate,
        "eval_img_per_s": eval_rate,
        "train_spread_pct": spread_pct(train),
        "eval_spread_pct": spread_pct(evaluation),
        "peak_memory_mib": peak.peak_mib,
        "peak_memory_allocated_mib": peak.peak_mib if config.device == "cuda" else math.nan,
        "peak_memory_reserved_mib": peak.reserved_mib,
        "gmacs": gmacs,
        "train_mfu_pct": mfu_pct(gmacs, train_rate, peak_flops, training=True),
        "eval_mfu_pct": mfu_pct(gmacs, eval_rate, peak_flops, training=False),
        "peak_source": peak_flops.description,
        **dataclasses.asdict(config),
        "peak_tflops": peak_flops.tflops,
    }


def benchmark_steps(
    steps: Iterable[Any], config: BenchmarkConfig, *, width_multiplier: float = 1.0, progress: bool = True
) -> list[dict[str, Any]]:
    """One row per roadmap step: its name, params, GMACs (conv + linear MACs at config.image_size) and measure()."""
    rows = []
    for step in steps:
        arch = dataclasses.replace(step.arch, width_multiplier=width_multiplier)
        model = build_model(arch, config.num_classes)
        complexity = count_complexity(model, config.image_size)
        figures = measure(model, config, gmacs=complexity.gmacs)
        rows.append({"step": step.name, "params": complexity.params, **figures})
        del model
        if progress:
            train, evaluation = figures["train_img_per_s"], figures["eval_img_per_s"]
            mfu = (f", MFU train {figures['train_mfu_pct']:.1f} % eval {figures['eval_mfu_pct']:.1f} %"
                   if math.isfinite(figures["train_mfu_pct"]) else "")
            print(
                f"{step.name}: train {train:.1f} img/s (spread {figures['train_spread_pct']:.1f} %),"
                f" eval {evaluation:.1f} img/s (spread {figures['eval_spread_pct']:.1f} %){mfu} [{config.describe()}]",
                file=sys.stderr,
                flush=True,
            )
    return rows


def format_table(rows: list[dict[str, Any]], config: BenchmarkConfig) -> str:
    """A plain-text table of benchmark_steps() rows, its header naming every setting the figures depend on.

    On CUDA it adds the reserved memory, and wherever a peak is known the MFU, with the peak it used."""
    header = [
        f"Throughput in img/s on {config.describe()}; median of {config.repeats} repeat(s) x "
        f"{config.iterations_per_repeat} iterations after {config.warmup} warm-up iterations.",
        "train = forward + backward + AdamW step; eval = torch.inference_mode forward; "
        "spread = (max - min) / median over the repeats (%).",
        f"GMACs: conv + linear multiply-accumulates per image at {config.image_size} px. "
        f"Peak memory: {PEAK_MEMORY_CONVENTION[config.device]}.",
    ]
    with_mfu = any(math.isfinite(row.get("train_mfu_pct", math.nan)) for row in rows)
    if with_mfu:
        header.append(f"MFU: model FLOPs (6 x MACs per trained image, 2 x per evaluated one, x img/s) in % of "
                      f"{rows[0]['peak_source']}.")
    columns = ["step", "params (M)", "GMACs", "train img/s", "spread %", "eval img/s", "spread %", "peak MiB"]
    if config.device == "cuda":
        columns.append("reserved MiB")
    if with_mfu:
        columns += ["MFU train %", "MFU eval %"]
    body = []
    for row in rows:
        cells = [
            row["step"],
            f"{row['params'] / 1e6:.2f}",
            f"{row['gmacs']:.3g}",
            f"{row['train_img_per_s']:.1f}",
            f"{row['train_spread_pct']:.1f}",
            f"{row['eval_img_per_s']:.1f}",
            f"{row['eval_spread_pct']:.1f}",
            f"{row['peak_memory_mib']:.0f}",
        ]
        if config.device == "cuda":
            cells.append(f"{row['peak_memory_reserved_mib']:.0f}")
        if with_mfu:
            cells += [f"{row['train_mfu_pct']:.1f}", f"{row['eval_mfu_pct']:.1f}"]
        body.append(cells)
    widths = [max(len(line[i]) for line in [columns, *body]) for i in range(len(columns))]

    def render(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    return "\n".join([*header, "", render(columns), render(["-" * w for w in widths]), *map(render, body)])
