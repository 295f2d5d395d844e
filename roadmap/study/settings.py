"""How a study runs, never what it is: devices, loaders, launcher and resources, paths. Nothing here is hashed."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..errors import SpecError
from ..spec import DEVICES, choice, positive_number, whole_number
from ..variants import StudyPlan


class Launcher(StrEnum):
    """Where a study's units of work run."""

    INLINE = "inline"  # one after another in this process (or in each process of torchrun)
    LOCAL = "local"  # submitit jobs on this machine, each on its own GPUs, at most --max-parallel at once
    SLURM = "slurm"  # one SLURM job array through submitit


@dataclass(frozen=True)
class RunSettings:
    """How every unit trains: device, memory format, compilation, data loading, progress bars."""

    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False
    progress: bool = True
    # Data-loader worker processes per training process (0: the training process loads and augments); None:
    # sized in the process that trains, from the cores it may use (roadmap.data.default_workers).
    workers: int | None = 0
    # Let torchvision download CIFAR into its folder when it is missing (needs a network).
    download: bool = False
    # The image cache's folder (--data-cache); the DataSpec's cache_short_side says the cache is used.
    data_cache: Path | None = None

    def __post_init__(self) -> None:
        choice("device", self.device, DEVICES)
        if self.workers is not None:
            whole_number("--workers", self.workers, 0)

    def loader_workers(self) -> int:
        """Worker processes for this process's loaders: the given number, or sized from its cores."""
        if self.workers is not None:
            return self.workers
        from ..data import default_workers

        return default_workers()


CLUSTER_ONLY = ("slurm_partition", "slurm_options", "mem_gb")  # the LaunchSettings only sbatch uses


@dataclass(frozen=True)
class LaunchSettings:
    """Where the units run: in this process, as local jobs, or as a SLURM job array, and with what resources."""

    launcher: Launcher = Launcher.INLINE
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
        object.__setattr__(self, "launcher", Launcher(choice("--launcher", self.launcher, tuple(Launcher))))
        for name in ("nodes", "gpus_per_node", "timeout_min"):
            whole_number(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        for name in ("max_parallel", "cpus_per_task", "mem_gb"):
            if getattr(self, name) is not None:
                whole_number(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        if self.launcher == Launcher.LOCAL and self.nodes != 1:
            raise SpecError(f"--nodes={self.nodes} is not valid with --launcher local; a local launch runs on "
                            "one machine (--nodes 1); use --launcher slurm for several nodes")

    @property
    def processes_per_job(self) -> int:
        return self.nodes * self.gpus_per_node

    def check_options(self) -> None:
        """The options given against the launcher: one that it does not use is an error, not silently ignored."""
        defaults = LaunchSettings()
        if self.launcher == Launcher.INLINE:
            given = [name for name in ("max_parallel", "nodes", "gpus_per_node", "cpus_per_task", "timeout_min", "wait",
                                       *CLUSTER_ONLY) if getattr(self, name) != getattr(defaults, name)]
            if given:
                option = "--no-wait" if given[0] == "wait" else f"--{given[0].replace('_', '-')}"
                raise SpecError(f"{option} applies to --launcher local or slurm, not inline (this process trains "
                                "every variant itself)")
        elif self.launcher == Launcher.LOCAL:
            given = [name for name in CLUSTER_ONLY if getattr(self, name) != getattr(defaults, name)]
            if given:
                raise SpecError(f"--{given[0].replace('_', '-')} applies to --launcher slurm, not local")
            if not self.wait:
                raise SpecError("--no-wait needs --launcher slurm: a local launch starts each job when a slot frees "
                                "up, so it stays until the last one ends (rerun it after an interruption: nothing is "
                                "lost)")


@dataclass(frozen=True)
class BenchSettings:
    """`--benchmark`: images per timed batch and timed repeats (the median is reported); None: the defaults, timm's
    protocol on CUDA (batch 256, 10 warm-up, 5 x 8 timed iterations), batch 32 x 5 repeats on the CPU."""

    batch_size: int | None = None
    repeats: int | None = None
    # The GPU's dense peak (TFLOP/s at the study's precision) for MFU, when the built-in table lacks the GPU.
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None:
            whole_number("--bench-batch-size", self.batch_size, 1)
        if self.repeats is not None:
            whole_number("--bench-repeats", self.repeats, 1)
        if self.peak_tflops is not None:
            positive_number("--peak-tflops", self.peak_tflops)


@dataclass(frozen=True)
class Study:
    """One invocation: the plan (what it studies) and how and where it runs."""

    plan: StudyPlan
    run: RunSettings = field(default_factory=RunSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    tracking_uri: str | None = None
    # How long every MLflow call waits for a tracking server that does not answer (seconds).
    tracking_patience_s: float = 600.0
    experiment: str = ""
    # Train again even where a finished run has the configuration (and discard its checkpoints).
    force: bool = False
    checkpoint_dir: Path = Path("checkpoints")
    results_dir: Path = Path("results")

    def __post_init__(self) -> None:
        if not self.experiment:
            object.__setattr__(self, "experiment", self.plan.roadmap.name)

    @property
    def title(self) -> str:
        return self.plan.roadmap.title
