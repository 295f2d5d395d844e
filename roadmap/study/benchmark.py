"""`--benchmark`: every variant's measured training and inference throughput and peak memory, in MLflow."""
from __future__ import annotations

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
    data = variants[0].data
    config = BenchmarkConfig(
        device=study.run.device, batch_size=study.bench.batch_size, image_size=data.image_size,
        precision=variants[0].precision, channels_last=study.run.channels_last, compile=study.run.compile,
        repeats=study.bench.repeats, num_classes=data.num_classes if data.kind == "synthetic" else 1000,
    )
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
                       Metric.BENCH_PEAK_MEMORY_MB: row["peak_memory_mb"],
                       Metric.BENCH_TRAIN_SPREAD_PCT: row["train_spread_pct"],
                       Metric.BENCH_EVAL_SPREAD_PCT: row["eval_spread_pct"], Metric.PARAMS: row["params"],
                       Metric.GMACS: row["gmacs"]}
            tags = {Tag.ORDER: variant.order, Tag.ROADMAP: plan.roadmap.name, Tag.PRESET: plan.preset,
                    Tag.CONFIG_HASH: variant.config_hash, Tag.BENCHMARK: config.describe()}
            tracker.log_benchmark(variant.name, figures, params={"arch": to_dict(variant.arch),
                                                                 "bench": to_dict(config)}, tags=tags)
    click.echo(format_table(rows, config))
    _, (csv_path, md_path) = write_study_table(study)
    click.echo(f"results: {csv_path} and {md_path}")
    return 0
