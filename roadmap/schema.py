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
    PARENT_STEP = "parent_step"
    SEED = "seed"
    CONFIG_HASH = "config_hash"
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
    """Outcomes of a step run, and of a step in a summary."""

    FINISHED = "finished"
    DIVERGED = "diverged"  # a non-finite loss stopped it; its last good epoch is kept
    FAILED = "failed"  # an exception ended it
    KILLED = "killed"  # interrupted (Ctrl-C, SIGTERM)
    RUNNING = "running"
    # Summary only: no run at all, some seeds finished, or numbers from the paper.
    MISSING = "missing"
    PARTIAL = "partial"
    PAPER = "paper"


# Outcomes the engine reports; a run with one of them is complete and is not trained again.
OUTCOMES = (Status.FINISHED, Status.DIVERGED)


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
    # Final.
    TOP1 = "top1"  # % on the validation split, last epoch
    TOP5 = "top5"
    TOP1_BEST = "top1_best"  # % , best epoch (the official script's max_accuracy)
    TOP1_BEST_EPOCH = "top1_best_epoch"
    PARAMS = "params"
    GMACS = "gmacs"  # 10^9 multiply-accumulates of conv + linear layers, one image
    EVAL_IMG_PER_S = "eval_img_per_s"
    PEAK_MEMORY_MB = "peak_memory_mb"  # MiB
    WALL_TIME_S = "wall_time_s"
    BENCH_TRAIN_IMG_PER_S = "bench_train_img_per_s"
    BENCH_EVAL_IMG_PER_S = "bench_eval_img_per_s"
    BENCH_PEAK_MEMORY_MB = "bench_peak_memory_mb"
    BENCH_TRAIN_SPREAD_PCT = "bench_train_spread_pct"
    BENCH_EVAL_SPREAD_PCT = "bench_eval_spread_pct"
    # A step's Δ top-1 against its parent (points) and its 95 % interval and p-value.
    DELTA_TOP1 = "delta_top1"
    DELTA_CI_LOW = "delta_ci_low"
    DELTA_CI_HIGH = "delta_ci_high"
    DELTA_P = "delta_p"


EPOCH_METRICS = (Metric.TRAIN_LOSS, Metric.LR, Metric.VAL_TOP1, Metric.VAL_TOP5, Metric.TRAIN_IMG_PER_S,
                 Metric.TRAIN_S, Metric.DATA_WAIT_S)
BENCH_METRICS = (Metric.BENCH_TRAIN_IMG_PER_S, Metric.BENCH_EVAL_IMG_PER_S, Metric.BENCH_PEAK_MEMORY_MB)


class Artifact(StrEnum):
    """Files of a run, in MLflow and in the run's checkpoint folder."""

    CONFIG = "config.json"  # the resolved configuration
    WEIGHTS = "weights.safetensors"  # the final weights, a plain state dict
    PREDICTIONS = "predictions.csv"  # the last epoch's per-image validation predictions
    BEST_PREDICTIONS = "predictions_best.csv"  # the best epoch's
    SUMMARY_CSV = "roadmap.csv"
    SUMMARY_MD = "roadmap.md"


# Files of a (step, seed) checkpoint folder besides the artifacts.
LAST_CHECKPOINT = "last.pt"  # the resume point, rewritten every epoch
FINAL_RESULT = "final.json"  # the result of a finished (or diverged) run
CLAIM_FILE = "claim.lock"  # held (flock) by the one process training this folder


def study_run_name(roadmap: str, kind: str = "study") -> str:
    """The parent run of one invocation: "resnet50_to_convnext_t study" (or "... benchmark")."""
    return f"{roadmap} {kind}"


def step_run_name(step: str, seed: int) -> str:
    """One (step, seed): "kernel_7 seed 0"."""
    return f"{step} seed {seed}"


def benchmark_run_name(step: str) -> str:
    return f"{step} (benchmark)"


def checkpoint_folder(root: Path | str, experiment: str, step: str, seed: int, config_hash: str) -> Path:
    """Where one (step, seed, configuration) keeps its checkpoints, weights and predictions."""
    return Path(root) / experiment / step / f"seed{seed}-{config_hash}"


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
