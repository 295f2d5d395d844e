"""`--benchmark`: every step's measured training and inference throughput and peak memory, recorded in MLflow."""
from __future__ import annotations

import click

from ..schema import Metric, Tag, study_run_name
from ..spec import to_dict
from ..training.throughput import BenchmarkConfig, benchmark_steps, format_table
from .options import StudyOptions


def run_benchmark(study: StudyOptions) -> int:
    """Measure every step's throughput and peak memory at the study's scale; record it; print a table."""
    from ..tracking import Tracker
    from .study import write_study_table

    tracker = Tracker(study.tracking_uri, study.experiment)
    data = study.resolve(study.steps[0]).data
    config = BenchmarkConfig(
        device=study.run.device, batch_size=study.bench.batch_size, image_size=data.image_size,
        precision=study.run.precision, channels_last=study.run.channels_last, compile=study.run.compile,
        repeats=study.bench.repeats, num_classes=data.num_classes if data.kind == "synthetic" else 1000,
    )
    rows = []
    params = {"roadmap": study.roadmap.name, "steps": ",".join(s.name for s in study.steps),
              "preset": study.preset.name, "benchmark": config.describe()}
    with tracker.study(study_run_name(study.roadmap.name, "benchmark"), params, {Tag.ROADMAP: study.roadmap.name}):
        for step in study.steps:
            arch = study.resolve(step).arch
            (row,) = benchmark_steps([step], config, width_multiplier=arch.width_multiplier,
                                     progress=study.run.progress)
            rows.append(row)
            figures = {Metric.BENCH_TRAIN_IMG_PER_S: row["train_img_per_s"],
                       Metric.BENCH_EVAL_IMG_PER_S: row["eval_img_per_s"],
                       Metric.BENCH_PEAK_MEMORY_MB: row["peak_memory_mb"],
                       Metric.BENCH_TRAIN_SPREAD_PCT: row["train_spread_pct"],
                       Metric.BENCH_EVAL_SPREAD_PCT: row["eval_spread_pct"], Metric.PARAMS: row["params"],
                       Metric.GMACS: row["gmacs"]}
            tags = {Tag.ORDER: step.order, Tag.ROADMAP: study.roadmap.name, Tag.PRESET: study.preset.name,
                    Tag.CONFIG_HASH: study.config_hash(step), Tag.BENCHMARK: config.describe()}
            tracker.log_benchmark(step.name, figures, params={"arch": to_dict(arch), "bench": to_dict(config)},
                                  tags=tags)
    click.echo(format_table(rows, config))
    _, (csv_path, md_path) = write_study_table(study)
    click.echo(f"results: {csv_path} and {md_path}")
    return 0
