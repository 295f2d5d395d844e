"""What one invocation of a study decided, validated, and each (step, seed) resolved from it."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..schema import checkpoint_folder
from ..spec import DEVICES, PRECISIONS, ArchSpec, DataSpec, RecipeSpec, choice, spec_hash, to_dict, whole_number
from ..steps import Roadmap, Step
from ..training.batching import BatchSplit, split_batch
from .presets import Preset, apply_preset

LAUNCHERS = ("inline", "local", "slurm")
REPORTS = ("last", "best")


@dataclass(frozen=True)
class ScaleOverrides:
    """Explicit overrides of the preset; None keeps the preset's value."""

    epochs: int | None = None
    # Effective batch (images per optimizer step, all processes and accumulation together).
    batch_size: int | None = None
    image_size: int | None = None
    width_multiplier: float | None = None
    # The peak learning rate itself (after batch scaling).
    lr: float | None = None
    workers: int | None = None
    # Images per process per forward pass (hence per BatchNorm statistic).
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 0), ("batch_size", 1), ("image_size", 1), ("workers", 0),
                              ("micro_batch", 1)):
            if getattr(self, name) is not None:
                whole_number(f"--{name.replace('_', '-')}", getattr(self, name), minimum)


@dataclass(frozen=True)
class RunSettings:
    """How every (step, seed) trains: device, precision, memory format, compilation, progress bars."""

    device: str = "cpu"
    # "bf16": forward passes under torch.autocast; "fp32" (TF32 on CUDA, as PyTorch 1.8 ran the originals).
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        choice("device", self.device, DEVICES)
        choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class LaunchSettings:
    """Where the (step, seed) jobs run: in this process, as local jobs, or as a SLURM job array."""

    launcher: str = "inline"
    # Jobs running at once (local: default one per visible GPU, one on a CPU-only machine; slurm: the
    # array's %-throttle, default no limit).
    max_parallel: int | None = None
    # Per job: nodes, and GPUs (= training processes) per node; on a CPU-only machine, processes per node.
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    timeout_min: int = 24 * 60
    slurm_partition: str | None = None
    # Passed to sbatch as --KEY=VALUE (account, qos, constraint, ...).
    slurm_options: tuple[tuple[str, str], ...] = ()
    # Wait for the jobs and write the results (False: return after submitting).
    wait: bool = True

    def __post_init__(self) -> None:
        choice("--launcher", self.launcher, LAUNCHERS)
        for name in ("nodes", "gpus_per_node", "timeout_min"):
            whole_number(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        for name in ("max_parallel", "cpus_per_task", "mem_gb"):
            if getattr(self, name) is not None:
                whole_number(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        if self.launcher == "local" and self.nodes != 1:
            raise SpecError(f"--nodes={self.nodes} is not valid with --launcher local; a local launch runs on "
                            "one machine (--nodes 1); use --launcher slurm for several nodes")

    @property
    def processes_per_job(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class BenchSettings:
    """`--benchmark`: images per timed batch and timed repeats (the median is reported)."""

    batch_size: int = 32
    repeats: int = 5

    def __post_init__(self) -> None:
        whole_number("--bench-batch-size", self.batch_size, 1)
        whole_number("--bench-repeats", self.repeats, 1)


@dataclass(frozen=True)
class ResolvedStep:
    """One step at a study's scale: its specs and how its batch splits over the processes of one job."""

    step: Step
    arch: ArchSpec
    recipe: RecipeSpec  # recipe.bn_batch is the resolved micro-batch: images per BatchNorm statistic
    data: DataSpec
    split: BatchSplit


@dataclass(frozen=True)
class StudyOptions:
    """Everything one invocation of run_ablation.py decided, validated."""

    roadmap: Roadmap
    steps: tuple[Step, ...]
    seeds: tuple[int, ...]
    preset: Preset
    data: DataSpec
    overrides: ScaleOverrides = field(default_factory=ScaleOverrides)
    run: RunSettings = field(default_factory=RunSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    tracking_uri: str | None = None
    experiment: str = ""
    force: bool = False
    checkpoint_dir: Path = Path("checkpoints")
    results_dir: Path = Path("results")
    # Which epoch's top-1 the table and the figures use: "last" or "best".
    report: str = "last"

    def __post_init__(self) -> None:
        choice("--report", self.report, REPORTS)
        if not self.experiment:
            object.__setattr__(self, "experiment", self.roadmap.name)

    def world_size(self) -> int:
        """Training processes of one (step, seed): torchrun's in this process, or the launcher's per job."""
        if self.launch.launcher == "inline":
            return int(os.environ.get("WORLD_SIZE", "1"))
        return self.launch.processes_per_job

    def resolve(self, step: Step) -> ResolvedStep:
        """The step's specs at this study's scale, its batch split over the processes of one job."""
        scale = self.overrides
        arch, recipe, data = apply_preset(
            self.preset, step.arch, step.recipe, self.data, epochs=scale.epochs, batch_size=scale.batch_size,
            image_size=scale.image_size, width_multiplier=scale.width_multiplier, lr=scale.lr,
        )
        if scale.workers is not None:
            data = dataclasses.replace(data, workers=scale.workers)
        micro = scale.micro_batch or (recipe.bn_batch if self.preset.micro_batch == "recipe" else None)
        split = split_batch(recipe.batch_size, self.world_size(), micro)
        recipe = dataclasses.replace(recipe, bn_batch=split.micro_batch)
        return ResolvedStep(step=step, arch=arch, recipe=recipe, data=data, split=split)

    def configuration(self, step: Step) -> dict[str, Any]:
        """The resolved configuration of a step: what its hash, its MLflow params and config.json hold."""
        resolved = self.resolve(step)
        return {
            "roadmap": self.roadmap.name, "step": step.name, "preset": self.preset.name,
            "arch": to_dict(resolved.arch), "recipe": to_dict(resolved.recipe), "data": to_dict(resolved.data),
            "precision": self.run.precision,
        }

    def config_hash(self, step: Step) -> str:
        return spec_hash(self.configuration(step))

    def checkpoint_folder(self, step: Step, seed: int) -> Path:
        return checkpoint_folder(self.checkpoint_dir, self.experiment, step.name, seed, self.config_hash(step))
