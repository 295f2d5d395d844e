"""Measured cost of a network (`--benchmark`): training and inference img/s, run-to-run noise, peak memory."""
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

# The optimizer of every timed training step; its update costs as much as the modern recipe's.
OPTIMIZER = "adamw"
PEAK_MEMORY_CONVENTION = {
    "cuda": "torch.cuda.max_memory_allocated (MiB) from just before the model is moved to the GPU: "
    "weights, gradients, AdamW state and activations",
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

    def __post_init__(self) -> None:
        choice("device", self.device, DEVICES)
        choice("precision", self.precision, PRECISIONS)
        for name in ("batch_size", "image_size", "repeats", "iterations_per_repeat", "num_classes"):
            whole_number(name, getattr(self, name), 1)
        whole_number("warmup", self.warmup, 0)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SpecError("device='cuda' is not valid here: torch.cuda.is_available() is False")

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous (NCHW)"

    def describe(self) -> str:
        """One line naming every setting a throughput figure depends on."""
        return (
            f"{device_name(self.device)}, batch {self.batch_size}, {self.image_size}x{self.image_size} px, "
            f"{self.precision}, {self.memory_format} memory format, {'torch.compile' if self.compile else 'eager'}"
        )


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
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


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
    """Peak memory of what runs inside the `with` block, in MiB; conventions in PEAK_MEMORY_CONVENTION."""

    def __init__(self, device: str):
        self.device = device
        self.mb = math.nan

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
            self.mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.mb = (_rss_high_water_kib() - self._start_kib) / 2**10


def measure(model: nn.Module, config: BenchmarkConfig) -> dict[str, Any]:
    """Training and evaluation throughput of `model` on random inputs, with their noise and peak memory.

    Returns train_img_per_s (forward + backward + AdamW step) and eval_img_per_s (inference-mode
    forward), each the median over `config.repeats` timed repeats after `config.warmup` untimed
    iterations; train_spread_pct and eval_spread_pct ((max - min) / median over the repeats, %);
    peak_memory_mb (see PEAK_MEMORY_CONVENTION); and every field of `config`. The model is moved
    to the device and its weights are updated by the training steps: pass a copy if they matter.
    """
    with PeakMemory(config.device) as peak:
        workload = Workload(model, config)
        workload.warm_up()
        train = [workload.time_train() for _ in range(config.repeats)]
        evaluation = [workload.time_eval() for _ in range(config.repeats)]
    return {
        "train_img_per_s": statistics.median(train),
        "eval_img_per_s": statistics.median(evaluation),
        "train_spread_pct": spread_pct(train),
        "eval_spread_pct": spread_pct(evaluation),
        "peak_memory_mb": peak.mb,
        **dataclasses.asdict(config),
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
        figures = measure(model, config)
        rows.append({"step": step.name, "params": complexity.params, "gmacs": complexity.gmacs, **figures})
        del model
        if progress:
            train, evaluation = figures["train_img_per_s"], figures["eval_img_per_s"]
            print(
                f"{step.name}: train {train:.1f} img/s (spread {figures['train_spread_pct']:.1f} %),"
                f" eval {evaluation:.1f} img/s (spread {figures['eval_spread_pct']:.1f} %) [{config.describe()}]",
                file=sys.stderr,
                flush=True,
            )
    return rows


def format_table(rows: list[dict[str, Any]], config: BenchmarkConfig) -> str:
    """A plain-text table of benchmark_steps() rows, its header naming every setting the figures depend on."""
    header = [
        f"Throughput in img/s on {config.describe()}; median of {config.repeats} repeat(s) x "
        f"{config.iterations_per_repeat} iterations after {config.warmup} warm-up iterations.",
        "train = forward + backward + AdamW step; eval = torch.inference_mode forward; "
        "spread = (max - min) / median over the repeats (%).",
        f"GMACs: conv + linear multiply-accumulates per image at {config.image_size} px. "
        f"Peak memory: {PEAK_MEMORY_CONVENTION[config.device]}.",
    ]
    columns = ["step", "params (M)", "GMACs", "train img/s", "spread %", "eval img/s", "spread %", "peak MiB"]
    body = [
        [
            row["step"],
            f"{row['params'] / 1e6:.2f}",
            f"{row['gmacs']:.3g}",
            f"{row['train_img_per_s']:.1f}",
            f"{row['train_spread_pct']:.1f}",
            f"{row['eval_img_per_s']:.1f}",
            f"{row['eval_spread_pct']:.1f}",
            f"{row['peak_memory_mb']:.0f}",
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [columns, *body]) for i in range(len(columns))]

    def render(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    return "\n".join([*header, "", render(columns), render(["-" * w for w in widths]), *map(render, body)])
