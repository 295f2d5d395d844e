"""Every roadmap step's training and inference img/s, peak memory and MFU, without a study or MLflow.

What `run_ablation.py --benchmark` measures, for any subset of steps and any protocol, printed as one table;
benchmarks/gpu_check.sh runs it eager and compiled.
"""
from __future__ import annotations

import dataclasses

import click
import torch

from roadmap import load_roadmap
from roadmap.cli.common import OneLineErrors
from roadmap.training.throughput import BenchmarkConfig, benchmark_steps, format_table

CPU_DEFAULTS = {"batch_size": 16, "warmup": 2, "repeats": 5, "iterations_per_repeat": 3}


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--roadmap", "roadmap_name", default="resnet50_to_convnext_t", show_default=True)
@click.option("--steps", default="all", show_default=True,
              help="Comma-separated step names, or 'all' (every step of the roadmap, in order).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch. Default: 16 on the CPU, 256 on CUDA (timm's benchmark protocol).")
@click.option("--image-size", type=click.IntRange(min=32), default=224, show_default=True, help="Input side (px).")
@click.option("--width-mult", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Uniform width multiplier of every network.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16 runs under torch.autocast; fp32 runs on TF32 on CUDA.")
@click.option("--channels-last/--no-channels-last", default=False, show_default=True)
@click.option("--compile/--no-compile", "compile_model", default=False, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Default: 2 on the CPU, 10 on CUDA.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Batches per timed repeat. Default: 3 on the CPU, 8 on CUDA (5 x 8 = timm's 40).")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The GPU's dense peak in TFLOPS for MFU. Default: looked up by GPU name and precision.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads for torch (0: torch's default).")
def main(roadmap_name: str, steps: str, device: str, batch_size: int | None, image_size: int, width_mult: float,
         precision: str, channels_last: bool, compile_model: bool, warmup: int | None, repeats: int,
         iterations: int | None, peak_tflops: float | None, threads: int) -> None:
    """Time forward + backward + AdamW and an inference forward of each step's network on random images."""
    if threads:
        torch.set_num_threads(threads)
    roadmap = load_roadmap(roadmap_name)
    chosen = roadmap.steps if steps == "all" else [roadmap.step(name.strip()) for name in steps.split(",")]
    given = {"batch_size": batch_size, "iterations_per_repeat": iterations, "warmup": warmup}
    settings = dict(device=device, image_size=image_size, precision=precision, channels_last=channels_last,
                    compile=compile_model, repeats=repeats, peak_tflops=peak_tflops,
                    **{key: value for key, value in given.items() if value is not None})
    config = (BenchmarkConfig.timm_protocol(**settings) if device == "cuda"
              else BenchmarkConfig(**{**CPU_DEFAULTS, **settings}))
    rows = benchmark_steps(chosen, config, width_multiplier=width_mult)
    click.echo(format_table(rows, config))
    click.echo(f"width multiplier {width_mult:g}; torch {torch.__version__}; "
               f"settings {dataclasses.asdict(config)}")


if __name__ == "__main__":
    main()
