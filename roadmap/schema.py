"""One schema of run names, tags, metrics, statuses and files, used by every writer and reader of a study."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class RunKind(StrEnum):
    """The `run_kind` tag: what an MLflow run holds."""

    STUDY = "study"  # the parent run of one invocation
    STEP = "step"  # one (step, seed) training
    BENCHMARK = "benchmark"  # one step's --benchmark figures


class Tag(StrEnum):
    """Tags of our MLflow runs (values are strings)."""

    RUN_KIND = "run_kind"
    # MLflow's own: nests a run under its parent in the UI and in searches.
    PARENT_RUN = "mlflow.parentRunId"
    # MLflow's own: the Markdown description shown on a run's or an experiment's page.
    DESCRIPTION = "mlflow.note.content"
    ROADMAP = "roadmap"
    STEP = "step"
    ORDER = "order"
    GROUP = "group"
    ADOPTED = "adopted"
    # The variant a step run's Δ is measured against (its parent step, or the final model in leave-one-out).
    BASELINE = "baseline"
    # "cumulative" or "leave-one-out" (roadmap.variants.Ablation), on the parent run and the step runs.
    ABLATION = "ablation"
    SEED = "seed"
    CONFIG_HASH = "config_hash"
    # What the configuration hash covers (roadmap.variants.HASH_VERSION): runs of another version are not reused.
    HASH_VERSION = "hash_version"
    PRESET = "preset"
    # A human description of the data ("synthetic (10 classes, 2304/500 images, 32 px)").
    DATASET = "dataset"
    # The DataSpec kind: synthetic, imagefolder, cifar10 or cifar100.
    DATA_KIND = "data_kind"
    DEVICE = "device"
    STATUS = "status"
    REASON = "reason"
    # How many times this run was started (a resume or a requeue adds one).
    ATTEMPTS = "attempts"
    BENCHMARK = "benchmark"
    # The test behind a step's Δ confidence interval: "welch" or "mcnemar".
    DELTA_TEST = "delta_test"
    GIT_REVISION = "git_revision"


class Status(StrEnum):
    """The one vocabulary of states: a run's outcome, a job's state, a unit's fate, a variant's row in a summary."""

    # Outcomes of a run the engine reports.
    FINISHED = "finished"
    DIVERGED = "diverged"  # a non-finite loss stopped it; its last good epoch is kept
    FAILED = "failed"  # an exception ended it (a job: it raised, was cancelled, ran out of time or memory)
    KILLED = "killed"  # interrupted (Ctrl-C, SIGTERM)
    # A job or a run on its way.
    PENDING = "pending"  # submitted, or waiting for a free slot
    RUNNING = "running"
    REQUEUED = "requeued"  # waiting to run again after a preemption, a time limit or `scontrol requeue`
    # What became of a unit besides training it.
    SKIPPED = "skipped"  # a finished run has its configuration: not trained again
    CLAIMED = "claimed"  # another process is training it (it holds the claim)
    # A variant in a summary.
    MISSING = "missing"  # no run at all
    PARTIAL = "partial"  # some seeds finished
    PAPER = "paper"  # numbers from the paper
    IDENTICAL = "identical"  # leave-one-out: the same configuration as another variant, not trained again
    UNBUILDABLE = "unbuildable"  # a combination the network cannot build: listed, never trained


# Outcomes the engine reports; a run with one of them is complete and is not trained again.
OUTCOMES = (Status.FINISHED, Status.DIVERGED)
# A job that is still in the queue or on a node.
ACTIVE = (Status.PENDING, Status.RUNNING, Status.REQUEUED)


class Metric(StrEnum):
    """Metric keys. Per-epoch ones are logged with MLflow step = epoch (1-based); final ones after the last epoch."""

    # Per epoch.
    TRAIN_LOSS = "train_loss"
    LR = "lr"
    VAL_TOP1 = "val_top1"
    VAL_TOP5 = "val_top5"
    TRAIN_IMG_PER_S = "train_img_per_s"
    TRAIN_S = "train_s"  # seconds of the epoch's training loop
    DATA_WAIT_S = "data_wait_s"  # the part of train_s spent waiting for batches
    DATA_WAIT_PCT = "data_wait_pct"  # data_wait_s in % of train_s (final: over all epochs)
    # Final.
    TOP1 = "top1"  # % on the validation split, last epoch
    TOP5 = "top5"
    TOP1_BEST = "top1_best"  # % , best epoch (the official script's max_accuracy)
    TOP1_BEST_EPOCH = "top1_best_epoch"
    PARAMS = "params"
    GMACS = "gmacs"  # 10^9 multiply-accumulates of conv + linear layers, one image
    EVAL_IMG_PER_S = "eval_img_per_s"
    # The run's own peaks (reset at its start), MiB: CUDA's allocated and reserved; the process's resident set.
    PEAK_MEMORY_ALLOCATED_MIB = "peak_memory_allocated_mib"
    PEAK_MEMORY_RESERVED_MIB = "peak_memory_reserved_mib"
    PEAK_PROCESS_RSS_MIB = "peak_process_rss_mib"
    RECOMPILES = "recompiles"  # torch.compile recompilations in the run (1 expected: training, then evaluation)
    WALL_TIME_S = "wall_time_s"
    BENCH_TRAIN_IMG_PER_S = "bench_train_img_per_s"
    BENCH_EVAL_IMG_PER_S = "bench_eval_img_per_s"
    BENCH_PEAK_MEMORY_MIB = "bench_peak_memory_mib"
    BENCH_TRAIN_SPREAD_PCT = "bench_train_spread_pct"
    BENCH_EVAL_SPREAD_PCT = "bench_eval_spread_pct"
    BENCH_PEAK_MEMORY_ALLOCATED_MIB = "bench_peak_memory_allocated_mib"  # CUDA only
    BENCH_PEAK_MEMORY_RESERVED_MIB = "bench_peak_memory_reserved_mib"  # CUDA only
    # Model FLOPs utilization, % of the GPU's dense peak (6 x MACs per trained image, 2 x per evaluated one).
    BENCH_TRAIN_MFU_PCT = "bench_train_mfu_pct"
    BENCH_EVAL_MFU_PCT = "bench_eval_mfu_pct"
    # A step's Δ top-1 against its parent (points) and its 95 % interval and p-value.
    DELTA_TOP1 = "delta_top1"
    DELTA_CI_LOW = "delta_ci_low"
    DELTA_CI_HIGH = "delta_ci_high"
    DELTA_P = "delta_p"


EPOCH_METRICS = (Metric.TRAIN_LOSS, Metric.LR, Metric.VAL_TOP1, Metric.VAL_TOP5, Metric.TRAIN_IMG_PER_S,
                 Metric.TRAIN_S, Metric.DATA_WAIT_S, Metric.DATA_WAIT_PCT)
BENCH_METRICS = (Metric.BENCH_TRAIN_IMG_PER_S, Metric.BENCH_EVAL_IMG_PER_S, Metric.BENCH_PEAK_MEMORY_MIB)


class Artifact(StrEnum):
    """Files of a run, in MLflow and in the run's checkpoint folder."""

    CONFIG = "config.json"  # the resolved configuration
    WEIGHTS = "weights.safetensors"  # the final weights, a plain state dict
    PREDICTIONS = "predictions.csv"  # the last epoch's per-image validation predictions
    BEST_PREDICTIONS = "predictions_best.csv"  # the best epoch's
    SUMMARY_CSV = "roadmap.csv"
    SUMMARY_MD = "roadmap.md"
    PLAN = "plan.json"  # the study's plan of variants (roadmap.variants.StudyPlan), on its parent run


# Files of a (step, seed) checkpoint folder besides the artifacts.
LAST_CHECKPOINT = "last.pt"  # the resume point, rewritten every epoch
FINAL_RESULT = "final.json"  # the result of a finished (or diverged) run
CLAIM_FILE = "claim.lock"  # held (flock) by the one process training this folder


def study_run_name(roadmap: str, kind: str = "study") -> str:
    """The parent run of one invocation: "resnet50_to_convnext_t study" (or "... benchmark")."""
    return f"{roadmap} {kind}"


def step_run_name(variant: str, seed: int) -> str:
    """One (variant, seed): "kernel_7 seed 0"."""
    return f"{variant} seed {seed}"


def benchmark_run_name(variant: str) -> str:
    return f"{variant} (benchmark)"


def checkpoint_folder(root: Path | str, experiment: str, config_hash: str, seed: int) -> Path:
    """Where one (configuration, seed) keeps its checkpoints, weights and predictions, whichever variant asked."""
    return Path(root) / experiment / config_hash / f"seed{seed}"


def launch_folder(root: Path | str, experiment: str) -> Path:
    """Where a cluster or local launch records its jobs (ids, logs), beside the checkpoints."""
    return Path(root) / experiment / "_launch"


@dataclass(frozen=True)
class DatasetRecord:
    """What a run records about one split it used (MLflow's dataset inputs); made by the data layer."""

    # e.g. "synthetic-train", "imagenette-val".
    name: str
    # A short hash of what decides the images: generator parameters and seed, or the list of files.
    digest: str
    # "training" or "validation" (MLflow's dataset context).
    context: str
    # "code" for generated data (then `source` names the generator and its parameters), "local" for files.
    source_kind: str
    source: str
    # Images, and the shape and dtype of one as the network receives it.
    num_images: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (channels, height, width)
    generator: dict[str, str | int] = field(default_factory=dict)
