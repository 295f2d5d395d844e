"""Typed results of training: one epoch's record, and one run's outcome (what final.json holds)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..schema import EPOCH_METRICS, Metric, Status


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch measured. Accuracies in % of the validation split; times in seconds."""

    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's micro-steps (all processes)
    lr: float  # learning rate of the epoch's last optimizer update
    val_top1: float
    val_top5: float  # top-k with k = min(5, classes)
    train_img_per_s: float  # training images per second, all processes together
    train_s: float  # the epoch's training loop
    data_wait_s: float  # the part of train_s this process waited for batches

    @property
    def data_wait_pct(self) -> float:
        """data_wait_s in % of train_s: how much of the loop the model sat idle for want of batches."""
        return 100 * self.data_wait_s / self.train_s if self.train_s > 0 else math.nan

    def metrics(self) -> dict[str, float]:
        """The per-epoch metrics by their schema names (the epoch itself is MLflow's step)."""
        return {**{key: getattr(self, key) for key in EPOCH_FIELDS}, Metric.DATA_WAIT_PCT: self.data_wait_pct}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochRecord:
        # Files written before train_s / data_wait_s existed lack them.
        return cls(**{field.name: values.get(field.name, math.nan) for field in dataclasses.fields(cls)})


EPOCH_FIELDS = tuple(field.name for field in dataclasses.fields(EpochRecord) if field.name != "epoch")
assert {*EPOCH_FIELDS, Metric.DATA_WAIT_PCT} == set(EPOCH_METRICS)


@dataclass(frozen=True)
class TrainResult:
    """The outcome of one training run.

    top1/top5 (%) and train_loss are the last epoch's (NaN after a divergence, or with no epoch);
    eval_img_per_s is the last evaluation's; wall_time_s adds up every attempt of this run,
    interrupted ones included. Memory figures are peaks of this attempt alone, in MiB
    (`roadmap.training.memory.PeakMemory`); None where they do not apply (CUDA's on the CPU) or were not
    measured (files written before they existed). peak_memory_mb is kept for readers of the old name: the
    allocated peak on CUDA, the process's RSS peak on the CPU, in MiB.
    """

    status: Status  # FINISHED or DIVERGED
    reason: str  # why it diverged; "" when it finished
    history: tuple[EpochRecord, ...]
    resumed_from_epoch: int  # 0 for a run that started from scratch
    top1: float
    top5: float
    train_loss: float
    eval_img_per_s: float
    peak_memory_mb: float
    wall_time_s: float
    peak_memory_allocated_mib: float | None = None
    peak_memory_reserved_mib: float | None = None
    peak_process_rss_mib: float | None = None
    # torch.compile recompilations of this attempt (roadmap.training.compiled); None when not compiled.
    recompiles: int | None = None

    @property
    def epochs_completed(self) -> int:
        return len(self.history)

    @property
    def best_epoch(self) -> EpochRecord | None:
        """The epoch with the highest val_top1 (the earliest of equals), as the official max_accuracy."""
        finite = [record for record in self.history if math.isfinite(record.val_top1)]
        return max(finite, key=lambda record: (record.val_top1, -record.epoch)) if finite else None

    @property
    def top1_best(self) -> float:
        best = self.best_epoch
        return best.val_top1 if best else math.nan

    @property
    def top1_best_epoch(self) -> int:
        best = self.best_epoch
        return best.epoch if best else 0

    @property
    def train_img_per_s(self) -> float:
        """Mean over the epochs."""
        rates = [record.train_img_per_s for record in self.history]
        return sum(rates) / len(rates) if rates else math.nan

    @property
    def train_s(self) -> float:
        return sum(record.train_s for record in self.history)

    @property
    def data_wait_s(self) -> float:
        return sum(record.data_wait_s for record in self.history)

    @property
    def data_wait_pct(self) -> float:
        """The training loops' wait for data in % of their time, over all epochs."""
        train = self.train_s
        return 100 * self.data_wait_s / train if train > 0 else math.nan

    def final_metrics(self) -> dict[str, float | None]:
        """The run's final numbers by their schema names; None for a figure that does not apply to this run."""
        return {
            Metric.TOP1: self.top1, Metric.TOP5: self.top5, Metric.TOP1_BEST: self.top1_best,
            Metric.TOP1_BEST_EPOCH: self.top1_best_epoch, Metric.TRAIN_IMG_PER_S: self.train_img_per_s,
            Metric.EVAL_IMG_PER_S: self.eval_img_per_s,
            Metric.WALL_TIME_S: self.wall_time_s,
            Metric.DATA_WAIT_PCT: None if math.isnan(self.data_wait_pct) else self.data_wait_pct,
            Metric.PEAK_MEMORY_ALLOCATED_MIB: self.peak_memory_allocated_mib,
            Metric.PEAK_MEMORY_RESERVED_MIB: self.peak_memory_reserved_mib,
            Metric.PEAK_PROCESS_RSS_MIB: self.peak_process_rss_mib, Metric.RECOMPILES: self.recompiles,
        }

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["status"] = str(self.status)
        values["history"] = [dataclasses.asdict(record) for record in self.history]
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainResult:
        names = {field.name for field in dataclasses.fields(cls)}
        kept = {key: value for key, value in values.items() if key in names}
        kept["status"] = Status(kept["status"])
        kept["history"] = tuple(EpochRecord.from_dict(record) for record in kept["history"])
        return cls(**kept)
