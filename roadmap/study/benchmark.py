"""`--benchmark`: every variant's measured training and inference throughput and peak memory, in MLflow."""
from __future__ import annotations

import math

import click

from ..schema import Metric, Tag, study_run_name
from ..spec import to_dict
from ..training.throughput import BenchmarkConfig, benchmark_steps, format_table
from .settings import Study


def run_benchmark(study: Study) -> int:
    """Measure every variant's throughput and peak memory at the study's scale; record it; print a table."""
    from ..tracking import Tracker
    from .collect import write_study_table

    plan = study.plan
    tracker = Tracker(study.tracking_uri, study.experiment)
    variants = plan.trained()
    config = benchmark_config(study)
    rows = []
    params = {"roadmap": plan.roadmap.name, "variants": ",".join(v.name for v in variants), "preset": plan.preset,
              "benchmark": config.describe()}
    with tracker.study(study_run_name(plan.roadmap.name, "benchmark"), params, {Tag.ROADMAP: plan.roadmap.name}):
        for variant in variants:
            (row,) = benchmark_steps([variant], config, width_multiplier=variant.arch.width_multiplier,
                                     progress=study.run.progress)
            rows.append(row)
            figures = {Metric.BENCH_TRAIN_IMG_PER_S: row["train_img_per_s"],
                       Metric.BENCH_EVAL_IMG_PER_S: row["eval_img_per_s"],
                       Metric.BENCH_PEAK_MEMORY_MIB: row["peak_memory_mib"],
                       Metric.BENCH_TRAIN_SPREAD_PCT: row["train_spread_pct"],
                       Metric.BENCH_EVAL_SPREAD_PCT: row["eval_spread_pct"], Metric.PARAMS: row["params"],
                       Metric.GMACS: row["gmacs"],
                       Metric.BENCH_PEAK_MEMORY_ALLOCATED_MIB: row.get("peak_memory_allocated_mib"),
                       Metric.BENCH_PEAK_MEMORY_RESERVED_MIB: row.get("peak_memory_reserved_mib"),
                       Metric.BENCH_TRAIN_MFU_PCT: row.get("train_mfu_pct"),
                       Metric.BENCH_EVAL_MFU_PCT: row.get("eval_mfu_pct")}
            figures = {key: value for key, value in figures.items() if _finite(value)}
            tags = {Tag.ORDER: variant.order, Tag.ROADMAP: plan.roadmap.name, Tag.PRESET: plan.preset,
                    Tag.CONFIG_HASH: variant.config_hash, Tag.BENCHMARK: config.describe()}
            tracker.log_benchmark(variant.name, figures, params={"arch": to_dict(variant.arch),
                                                                 "bench": to_dict(config)}, tags=tags)
    click.echo(format_table(rows, config))
    _, (csv_path, md_path) = write_study_table(study)
    click.echo(f"results: {csv_path} and {md_path}")
    return 0


def benchmark_config(study: Study) -> BenchmarkConfig:
    """What --benchmark runs: timm's protocol on CUDA unless batch or repeats are given, with training's numerics."""
    variants = study.plan.trained()
    data = variants[0].data
    settings = dict(image_size=data.image_size, precision=variants[0].precision,
                    channels_last=study.run.channels_last, compile=study.run.compile,
                    num_classes=data.num_classes if data.kind == "synthetic" else 1000,
                    peak_tflops=study.bench.peak_tflops)
    given = {key: value for key, value in (("batch_size", study.bench.batch_size), ("repeats", study.bench.repeats))
             if value is not None}
    if study.run.device == "cuda":
        return BenchmarkConfig.timm_protocol(**settings, **given)
    return BenchmarkConfig(device="cpu", **({"batch_size": 32, "repeats": 5} | given), **settings)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)
