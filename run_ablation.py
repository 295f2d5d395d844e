"""Train, evaluate and track every cumulative step of a modernization roadmap (or plan it without training)."""
from __future__ import annotations

from pathlib import Path

import click

from roadmap.cli import OneLineErrors, parse_int_list
from roadmap.steps import list_roadmaps, load_roadmap

DEFAULT_ROADMAP = "resnet50_to_convnext_t"


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--roadmap", "roadmap_name", default=DEFAULT_ROADMAP, show_default=True,
              help="Roadmap to run: a folder of step files under steps/ (see --list-roadmaps).")
@click.option("--list-roadmaps", is_flag=True, help="List the roadmaps and exit.")
@click.option("--list-steps", is_flag=True, help="Print every step of the roadmap (the plan table) and exit.")
@click.option("--upto", metavar="STEP", help="Last step to run; every step before it in roadmap order, explored "
              "branches included, runs too. Default: the roadmap's last step.")
@click.option("--dry-run", is_flag=True, help="Print the plan (params, GMACs, the paper's numbers) without training.")
@click.option("--json", "as_json", is_flag=True, help="With --list-steps or --dry-run: print the plan as JSON.")
@click.option("--data", default="synthetic", show_default=True,
              help="Data set: synthetic (built in, generated), imagefolder:PATH (PATH/train/<class>/*, "
              "PATH/val/<class>/*), cifar10:PATH or cifar100:PATH (torchvision's copy under PATH).")
@click.option("--download", is_flag=True, help="Let torchvision download CIFAR into PATH (needs a network).")
@click.option("--preset", default=None, help="Training scale: smoke (tests, seconds per step), demo (default on "
              "synthetic data: the whole chain on a 2-core CPU in 10 min), proxy (one GPU, lower resolution), "
              "paper (ImageNet-1k protocol; default on real data).")
@click.option("--epochs", type=int, help="Override the preset's epochs (schedules scale with it).")
@click.option("--batch-size", type=int, help="Override the effective batch (images per optimizer step, all "
              "processes together); the learning rate scales linearly with it.")
@click.option("--micro-batch", type=int, help="Images per process per forward pass; the rest of the effective "
              "batch comes from gradient accumulation. Default: the whole per-process batch at once.")
@click.option("--image-size", type=int, help="Override the training/evaluation resolution (pixels).")
@click.option("--width-mult", type=float, help="Override the uniform width multiplier of every network.")
@click.option("--lr", type=float, help="Override the peak learning rate (after batch scaling).")
@click.option("--workers", type=int,
              help="Data-loader worker processes per training process (default: the preset's). With 0 the training "
              "process augments images itself and keeps them for later steps with the same data and recipe.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds; each step trains once per seed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train; auto picks CUDA when available.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="bf16 runs the forward pass under torch.autocast. Default: the preset's on CUDA (proxy and "
              "paper: bf16), fp32 on the CPU.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Use the channels_last memory format. Default: the preset's (demo, proxy, paper: on).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile each network.")
@click.option("--sync-bn", is_flag=True, help="Under torchrun, convert BatchNorm to SyncBatchNorm.")
@click.option("--tracking-uri", help="MLflow tracking store: a directory (file store), sqlite:///PATH or "
              "http://HOST:PORT. Default: MLflow's own default, sqlite:///mlflow.db in this directory.")
@click.option("--experiment", help="MLflow experiment name. Default: the roadmap's name.")
@click.option("--force", is_flag=True, help="Re-run steps that already have a finished run with the same "
              "configuration (and discard their checkpoints).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=Path("checkpoints"), show_default=True,
              help="Where each (step, seed) keeps its per-epoch checkpoint for resuming.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Where results/<experiment>/roadmap.{csv,md} are written after the study.")
@click.option("--benchmark", is_flag=True, help="Measure each step's training and evaluation throughput (img/s) "
              "and peak memory instead of training; recorded in MLflow and the results table.")
@click.option("--bench-batch-size", type=int, default=32, show_default=True, help="Batch size of --benchmark.")
@click.option("--bench-repeats", type=int, default=5, show_default=True,
              help="Timed repeats of --benchmark (the median is reported, the spread is the noise).")
@click.option("--steps-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder holding the roadmaps (default: this project's steps/).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(**options) -> int:
    """Run the ResNet -> ConvNeXt modernization study step by step.

    Every step of the roadmap is trained and evaluated (per seed) as a nested MLflow run, and the
    results land in results/<experiment>/roadmap.{csv,md}. Rerunning the same command skips finished
    steps and resumes interrupted ones from their last epoch.

    \b
    Examples:
      python run_ablation.py --list-steps
      python run_ablation.py --upto bn_to_ln --dry-run
      python run_ablation.py --upto bn_to_ln                  # demo preset on built-in synthetic data
      python run_ablation.py --upto kernel_7 --preset smoke --seeds 0,1,2
      torchrun --nproc_per_node=2 run_ablation.py --preset smoke --upto stage_ratio
    """
    if options["list_roadmaps"]:
        for name in list_roadmaps(options["steps_dir"]):
            roadmap = load_roadmap(name, options["steps_dir"])
            click.echo(f"{name:<26} {len(roadmap.steps):>2} steps  {roadmap.title}")
        return 0
    roadmap = load_roadmap(options["roadmap_name"], options["steps_dir"])
    steps = roadmap.upto(options["upto"]) if options["upto"] else list(roadmap.steps)
    seeds = parse_int_list(options["seeds"], "--seeds")
    from roadmap.study import StudyOptions, run_benchmark, run_study, validate_study

    if options["list_steps"] or options["dry_run"]:
        from roadmap.plan import format_plan_json, format_plan_table, plan_rows

        if options["dry_run"]:  # the plan of a study that would start: every option checked as a run checks it
            validate_study(StudyOptions.from_cli(roadmap, steps, seeds, options))

        # The paper's scale unless asked; `or` would turn an invalid 0 into the default instead of refusing it.
        image_size = 224 if options["image_size"] is None else options["image_size"]
        width = 1.0 if options["width_mult"] is None else options["width_mult"]
        rows = plan_rows(list(roadmap.steps) if options["list_steps"] else steps, image_size, width)
        if options["as_json"]:
            click.echo(format_plan_json(rows))
        else:
            click.echo(format_plan_table(rows, roadmap.title, image_size, width))
        return 0
    study = StudyOptions.from_cli(roadmap, steps, seeds, options)
    return run_benchmark(study) if options["benchmark"] else run_study(study)


if __name__ == "__main__":
    main()
