"""`run_ablation.py` (installed as `run-ablation`): plan, train, evaluate and track an ablation study of a roadmap."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..steps import list_roadmaps, load_roadmap
from .common import OneLineErrors, parse_int_list, parse_key_values

DEFAULT_ROADMAP = "resnet50_to_convnext_t"


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--roadmap", "roadmap_name", default=DEFAULT_ROADMAP, show_default=True,
              help="Roadmap to run: a folder of step files under steps/ (see --list-roadmaps).")
@click.option("--list-roadmaps", is_flag=True, help="List the roadmaps and exit.")
@click.option("--list-steps", is_flag=True, help="Print every step of the roadmap (the plan table) and exit.")
@click.option("--upto", metavar="STEP", help="Last step the study covers; cumulative: every step before it in roadmap "
              "order, explored branches included, runs too; leave-one-out: the final model is the last adopted step "
              "at STEP. Default: the roadmap's last step.")
@click.option("--ablation", type=click.Choice(["cumulative", "leave-one-out"]), default="cumulative",
              show_default=True, help="cumulative: every step on top of its parent, each Δ against the parent (the "
              "paper's Figure 2). leave-one-out: the final model, and for each adopted step from the second on "
              "`without_<step>`, the chain replayed with every other step's change, each Δ against the final model.")
@click.option("--dry-run", is_flag=True, help="Print the plan (every variant, what its Δ is against, its params and "
              "GMACs here and at 224 px full width, the paper's numbers, and how it would train: batch split, "
              "BatchNorm batch, peak lr) without training; every option is checked.")
@click.option("--json", "as_json", is_flag=True, help="With --list-steps or --dry-run: print the plan as JSON.")
@click.option("--data", default="synthetic", show_default=True,
              help="Data set: synthetic (built in, generated), imagefolder:PATH (PATH/train/<class>/*, "
              "PATH/val/<class>/*), cifar10:PATH or cifar100:PATH (torchvision's copy under PATH).")
@click.option("--download", is_flag=True, help="Let torchvision download CIFAR into PATH (needs a network).")
@click.option("--data-cache", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="imagefolder data: read every image from a cache in DIR, built once (decoded, resized to a short "
              "side of 1.2x the resolution, aspect kept) by the first run that needs it, and shared by every later "
              "study and job. The resize before RandomResizedCrop gives other pixels than the files', so a cached "
              "study is its own configuration (README, 'A data set prepared once').")
@click.option("--preset", default=None, help="Training scale: smoke (tests, seconds per step), demo (default on "
              "synthetic data: the 16 steps up to bn_to_ln in 4 to 7 minutes on 2 CPU cores), proxy (one GPU, "
              "lower resolution), paper (ImageNet-1k protocol; default on real data).")
@click.option("--epochs", type=int, help="Override the preset's epochs (schedules scale with it).")
@click.option("--batch-size", type=int, help="Override the effective batch (images per optimizer step, all "
              "processes together); the learning rate scales linearly with it.")
@click.option("--micro-batch", type=int, help="Images per process per forward pass, hence per BatchNorm statistic; "
              "the rest of the effective batch comes from gradient accumulation. Default: the preset's (paper and "
              "proxy: the original runs' per-GPU batch, classic 32 and modern 128; smoke and demo: a process's whole "
              "share of the batch).")
@click.option("--image-size", type=int, help="Override the training/evaluation resolution (pixels).")
@click.option("--width-mult", type=float, help="Override the uniform width multiplier of every network.")
@click.option("--lr", type=float, help="Override the peak learning rate (after batch scaling).")
@click.option("--workers", type=int,
              help="Data-loader worker processes per training process. Default: the preset's (smoke, demo: 0; proxy, "
              "paper: sized in each training process from the cores it may use, its CPU affinity and "
              "SLURM_CPUS_PER_TASK, minus one for itself). With 0 the training process augments images itself and "
              "keeps them for later steps with the same data and recipe.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds; each step trains once per seed.")
@click.option("--report", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="Which top-1 the results table, the Δs and the figures use: the last epoch's, or the best "
              "epoch's (the official ConvNeXt script's max_accuracy). Both are recorded for every run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train; auto picks CUDA when available.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="bf16 runs the forward pass under torch.autocast. Default: the preset's on CUDA (proxy: bf16; "
              "paper: fp32 as the original runs, TF32 on CUDA), fp32 on the CPU.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Use the channels_last memory format. Default: the preset's (demo, proxy, paper: on).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile each network.")
@click.option("--sync-bn", is_flag=True, help="Under torchrun, convert BatchNorm to SyncBatchNorm.")
@click.option("--launcher", type=click.Choice(["inline", "local", "slurm"]), default="inline", show_default=True,
              help="Where the (step, seed) runs train: inline (one after another in this process, or in the "
              "processes of torchrun), local (submitit jobs on this machine, one GPU each), slurm (one SLURM job "
              "array through submitit; run the same command again to re-attach).")
@click.option("--max-parallel", type=int, help="Jobs running at once. local: default one per visible GPU (one on a "
              "CPU-only machine); slurm: the array's throttle (default: no limit).")
@click.option("--nodes", type=int, default=1, show_default=True, help="slurm: nodes per job.")
@click.option("--gpus-per-node", type=int, default=1, show_default=True,
              help="local/slurm: GPUs per node of a job, one training process each (on a CPU-only machine: "
              "processes per node).")
@click.option("--cpus-per-task", type=int, help="local/slurm: CPU cores per training process (default: --workers + "
              "1; with workers sized automatically, slurm asks for 10 and local shares the machine's cores).")
@click.option("--mem-gb", type=int, help="slurm: memory per node, GiB (default: the cluster's).")
@click.option("--timeout-min", type=int, default=24 * 60, show_default=True,
              help="local/slurm: wall-time limit of one job attempt, minutes; a job reaching it is requeued and "
              "resumes from its last epoch checkpoint.")
@click.option("--slurm-partition", help="slurm: partition (default: the cluster's default).")
@click.option("--slurm-option", "slurm_options", multiple=True, metavar="KEY=VALUE",
              help="slurm: passed to sbatch as --KEY=VALUE (account, qos, constraint, ...); repeatable.")
@click.option("--no-wait", is_flag=True, help="local/slurm: return once the jobs are submitted (slurm) instead of "
              "following them; the same command later re-attaches and writes the results.")
@click.option("--tracking-uri", help="MLflow tracking store: sqlite:///PATH, http://HOST:PORT of an `mlflow "
              "server` (needed when jobs run on several machines) or a directory (file store). Default: MLflow's "
              "own default, sqlite:///mlflow.db in this directory.")
@click.option("--tracking-patience-min", type=float, default=10.0, show_default=True,
              help="Minutes every MLflow call waits, with backoff, for a tracking server that does not answer (a "
              "restart, a network blip) before the study stops with exit code 1 (rerun it: nothing is lost). A "
              "wrong URI or wrong credentials fail at once with exit code 2.")
@click.option("--experiment", help="MLflow experiment name. Default: the roadmap's name.")
@click.option("--force", is_flag=True, help="Re-run steps that already have a finished run with the same "
              "configuration (and discard their checkpoints).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=Path("checkpoints"), show_default=True,
              help="Where each (step, seed) keeps its per-epoch checkpoint, weights and predictions, and a launch "
              "its job records; on a cluster, a folder every node can write.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Where results/<experiment>/ (roadmap.csv, roadmap.md and the figures) is written after the study.")
@click.option("--benchmark", is_flag=True, help="Measure each step's training and evaluation throughput (img/s) "
              "and peak memory instead of training; recorded in MLflow and the results table.")
@click.option("--bench-batch-size", type=int, help="Images per timed batch of --benchmark. Default: 256 on CUDA "
              "(timm's benchmark protocol: 10 warm-up and 5 x 8 timed iterations), 32 on the CPU.")
@click.option("--bench-repeats", type=int, help="Timed repeats of --benchmark (the median is reported, the spread is "
              "the noise). Default: 5.")
@click.option("--peak-tflops", type=float, help="--benchmark: the GPU's dense peak (TFLOP/s at the study's "
              "precision) for MFU, when the built-in table of A100, H100, H200, L40S, RTX 4090/3090 lacks it.")
@click.option("--plan-measure", is_flag=True, help="Time each variant here for a few seconds (the benchmark code at "
              "the study's micro-batch, resolution and precision) for the plan's GPU-hours (CPU-hours); without it "
              "the img/s comes from --benchmark or finished runs of the same configuration and device in the store.")
@click.option("--plan-device", metavar="GPU", help="The target GPU's name as torch.cuda.get_device_name() gives it "
              "(e.g. 'NVIDIA A100-SXM4-80GB'), to find its figures in the store when planning elsewhere.")
@click.option("--pilot-study", metavar="RUN_ID", help="A study of this experiment (its parent run id) whose "
              "seed-to-seed std stands for a variant's noise when its own configuration has < 2 finished seeds.")
@click.option("--noise-prior", type=float, metavar="POINTS", help="Seed-to-seed std of top-1 (points) assumed "
              "where neither the store nor a pilot has one (default: the paper's top1_std of the step).")
@click.option("--expected-top1", type=float, metavar="PCT", help="Expected top-1 (%) where no run says it: where "
              "the validation set's binomial sampling error, the floor under the noise, is taken (default 50 %).")
@click.option("--budget-gpu-hours", type=float, metavar="H", help="Refuse (exit 2, before anything is submitted) a "
              "plan whose runs still to train cost more than H GPU-hours (CPU-hours on a CPU), or an unknown cost.")
@click.option("--steps-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder holding the roadmaps (default: the roadmaps this project ships).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def main(**options: Any) -> int:
    """Run an ablation study of the ResNet -> ConvNeXt modernization roadmap.

    The study is planned once as a list of variants (cumulative: the roadmap's steps; leave-one-out: the final
    model and the model without each step). Every variant is trained and evaluated (per seed) as a nested MLflow
    run, and the results land in results/<experiment>/ (leave-one-out: results/<experiment>/leave-one-out/):
    roadmap.csv, roadmap.md and the figures, also logged on the study's parent run with the plan. Rerunning the
    same command skips finished runs (same configuration hash and seed) and resumes interrupted ones from their
    last epoch. Installed as `run-ablation`.

    \b
    Examples:
      python run_ablation.py --list-steps
      python run_ablation.py --upto bn_to_ln --dry-run
      python run_ablation.py --upto bn_to_ln                  # demo preset on built-in synthetic data
      python run_ablation.py --upto kernel_7 --preset smoke --seeds 0,1,2
      python run_ablation.py --ablation leave-one-out --preset smoke --dry-run
      torchrun --nproc_per_node=2 run_ablation.py --preset smoke --upto stage_ratio
      python run_ablation.py --preset smoke --upto stage_ratio --seeds 0,1 --launcher slurm --cpus-per-task 1
    """
    if options["list_roadmaps"]:
        for name in list_roadmaps(options["steps_dir"]):
            roadmap = load_roadmap(name, options["steps_dir"])
            click.echo(f"{name:<26} {len(roadmap.steps):>2} steps  {roadmap.title}")
        return 0
    roadmap = load_roadmap(options["roadmap_name"], options["steps_dir"])
    if options["upto"]:
        roadmap.step(options["upto"])  # an unknown step is a one-line error naming the valid ones
    if options["list_steps"]:
        return _list_steps(roadmap, options)
    study = build_study(roadmap, options)
    from ..study.checks import check_launch, validate_study
    from ..study.driver import visible_gpus
    from ..study.estimate import settings_from_options

    estimates = settings_from_options(options, sys.argv[1:])
    validate_study(study)
    check_launch(study, visible_gpus(study))
    if options["dry_run"]:
        from ..study.plan_table import dry_run

        return dry_run(study, estimates, options["as_json"])
    if options["benchmark"]:
        from ..study.benchmark import run_benchmark

        return run_benchmark(study)
    from ..study.driver import run_study

    return run_study(study, estimates)


def _list_steps(roadmap, options: dict[str, Any]) -> int:
    from ..study.plan_table import format_steps_json, format_steps_table, step_rows

    # The paper's scale unless asked; `or` would turn an invalid 0 into the default instead of refusing it.
    image_size = 224 if options["image_size"] is None else options["image_size"]
    width = 1.0 if options["width_mult"] is None else options["width_mult"]
    rows = step_rows(list(roadmap.steps), image_size, width)
    click.echo(format_steps_json(rows) if options["as_json"] else
               format_steps_table(rows, roadmap.title, image_size, width))
    return 0


def build_study(roadmap, options: dict[str, Any]):
    """The study this command's options describe: its plan (what) and its settings (how); every value checked."""
    import os

    from ..spec import DataSpec, choice, positive_number
    from ..study.presets import get_preset
    from ..study.settings import BenchSettings, LaunchSettings, RunSettings, Study
    from ..variants import Ablation

    seeds = parse_int_list(options["seeds"], "--seeds")
    data = DataSpec(source=options["data"])
    if data.path:  # jobs may start in another folder, and the path is part of what a run is: made absolute
        data = DataSpec(source=f"{data.kind}:{Path(data.path).expanduser().resolve()}")
    preset = get_preset(options["preset"] or ("demo" if data.kind == "synthetic" else "paper"))
    device = options["device"]
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    launch = LaunchSettings(
        launcher=options["launcher"], max_parallel=options["max_parallel"], nodes=options["nodes"],
        gpus_per_node=options["gpus_per_node"], cpus_per_task=options["cpus_per_task"], mem_gb=options["mem_gb"],
        timeout_min=options["timeout_min"], slurm_partition=options["slurm_partition"],
        slurm_options=parse_key_values(options["slurm_options"], "--slurm-option"), wait=not options["no_wait"],
    )
    launch.check_options()
    run = RunSettings(
        device=device,
        channels_last=preset.channels_last if options["channels_last"] is None else options["channels_last"],
        compile=options["compile_model"], sync_batchnorm=options["sync_bn"], progress=not options["no_progress"],
        workers=preset.workers if options["workers"] is None else options["workers"], download=options["download"],
        data_cache=options["data_cache"],
    )
    # bf16 autocast is for GPUs: on a CPU without bf16 units it runs ~15x slower than fp32.
    precision = options["precision"] or (preset.precision if device == "cuda" else "fp32")
    # The planner builds the models (torch, timm: seconds to import): after every check that needs none.
    from ..study.planner import ScaleOverrides, StudyRequest, plan_study

    processes = int(os.environ.get("WORLD_SIZE", "1")) if launch.launcher == "inline" else launch.processes_per_job
    request = StudyRequest(
        roadmap=roadmap, preset=preset, data=data, seeds=tuple(seeds), ablation=Ablation(options["ablation"]),
        upto=options["upto"], precision=precision, report=choice("--report", options["report"], ("last", "best")),
        processes=processes, cached=options["data_cache"] is not None,
        overrides=ScaleOverrides(
            epochs=options["epochs"], batch_size=options["batch_size"], image_size=options["image_size"],
            width_multiplier=options["width_mult"], lr=options["lr"], micro_batch=options["micro_batch"],
        ),
    )
    return Study(
        plan=plan_study(request), run=run, launch=launch,
        bench=BenchSettings(options["bench_batch_size"], options["bench_repeats"], options["peak_tflops"]),
        tracking_uri=options["tracking_uri"], experiment=options["experiment"] or roadmap.name,
        tracking_patience_s=60 * positive_number("--tracking-patience-min", options["tracking_patience_min"]),
        force=options["force"], checkpoint_dir=options["checkpoint_dir"], results_dir=options["results_dir"],
    )
