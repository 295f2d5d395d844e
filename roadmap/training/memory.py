"""Peak memory of one run, measured from the run's own start: CUDA's allocator peaks and the process's peak RSS."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

MIB = 2**20
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class PeakMemory:
    """Peaks in MiB since `MemoryWatch` started; None where a figure does not apply or cannot be measured."""

    # torch.cuda.max_memory_allocated: tensors alive at once (weights, gradients, optimizer state,
    # activations). None on the CPU.
    allocated_mib: float | None
    # torch.cuda.max_memory_reserved: what the caching allocator held from the driver, allocated or not;
    # what decides an out-of-memory error. None on the CPU.
    reserved_mib: float | None
    # The training process's peak resident set (VmHWM) since the run started, whatever the process held
    # before included (data sets, an earlier step's leftovers); loader workers are other processes and not in
    # it. None where the peak cannot be reset to the run's start (not Linux).
    process_rss_mib: float | None

    def device_peak_mib(self) -> float:
        """The one figure of the device the run trained on: allocated on CUDA, the process's RSS on the CPU."""
        figure = self.allocated_mib if self.allocated_mib is not None else self.process_rss_mib
        return math.nan if figure is None else figure


class MemoryWatch:
    """Resets the peaks when created; `peak()` reads them. One per run, so each run has its own peaks."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.rss_reset = reset_rss_high_water_mark()

    def peak(self) -> PeakMemory:
        if self.device.type == "cuda":
            allocated = torch.cuda.max_memory_allocated(self.device) / MIB
            reserved = torch.cuda.max_memory_reserved(self.device) / MIB
        else:
            allocated = reserved = None
        high_water_kib = rss_high_water_mark_kib() if self.rss_reset else math.nan
        rss = None if math.isnan(high_water_kib) else high_water_kib / 1024
        return PeakMemory(allocated_mib=allocated, reserved_mib=reserved, process_rss_mib=rss)


def reset_rss_high_water_mark() -> bool:
    """Lower the process's peak RSS to its current RSS (Linux >= 4.0: clear_refs 5); False where impossible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def rss_high_water_mark_kib() -> float:
    """The process's peak resident set (VmHWM) in KiB since it began or since the last reset; NaN if unknown."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])  # "VmHWM:   543816 kB"
    except OSError:
        pass
    return math.nan
