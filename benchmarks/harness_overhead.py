"""What data loading and logging add to the pure model step of one training epoch, at a preset's scale."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
import torch

from roadmap import DataSpec, build_model, load_roadmap
from roadmap.cli.common import OneLineErrors
from roadmap.data import build_datasets, build_loaders, default_workers
from roadmap.study.presets import apply_preset, get_preset
from roadmap.study.unit import cpu_threads
from roadmap.training.engine import TrainOptions, train_and_evaluate
from roadmap.training.optim import build_loss, build_optimizer


def pure_step_seconds(model: torch.nn.Module, recipe, batches: list, num_classes: int) -> float:
    """Seconds of forward + loss + backward + optimizer step over batches already in memory."""
    mixup, criterion = build_loss(recipe, num_classes)
    optimizer = build_optimizer(model, recipe)
    model.train()
    start = time.perf_counter()
    for images, labels in batches:
        if mixup is not None:
            images, labels = mixup(images, labels)
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def harness_epoch(arch, recipe, datasets, loaders, step: str, seed: int, channels_last: bool) -> tuple[float, float]:
    """One epoch through train_and_evaluate: (seconds with MLflow logging but without the evaluation,
    seconds the training loop waited for batches)."""
    from roadmap.tracking import Tracker

    train_loader, val_loader = loaders
    with tempfile.TemporaryDirectory() as scratch:
        tracker = Tracker(f"sqlite:///{scratch}/mlflow.db", "overhead")
        model = build_model(arch, datasets.num_classes)
        options = TrainOptions(checkpoint_dir=Path(scratch) / "checkpoint", seed=seed, progress=True,
                               channels_last=channels_last)
        with tracker.step_run(step, seed, "overhead", params={}, tags={}, config={}) as run:
            result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=datasets.num_classes,
                                        options=options, on_epoch=lambda r: run.log_epoch(r.metrics(), r.epoch))
    return result.wall_time_s - len(datasets.val) / result.eval_img_per_s, result.data_wait_s


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--step", default="modern_recipe", show_default=True, help="Roadmap step whose network trains.")
@click.option("--roadmap", "roadmap_name", default="resnet50_to_convnext_t", show_default=True)
@click.option("--preset", default="demo", show_default=True, help="Scale (data size, resolution, width, batch).")
@click.option("--repeats", default=5, show_default=True, help="Epochs timed each way; medians are reported.")
def main(step: str, roadmap_name: str, preset: str, repeats: int) -> None:
    """Time one training epoch through the harness (data loader, augmentation, normalization, random erasing,
    progress bar, checkpoint, MLflow logging) against the same number of pure model steps (forward, loss,
    backward, optimizer) on batches already in memory, on this CPU, with the preset's memory format.

    "first step" builds the data sets afresh, as the first step of a study that uses them does; "later
    steps" reuses them, as every later step with the same data and recipe does, and finds the augmented
    items kept from the first (they are a function of seed, epoch and index)."""
    roadmap = load_roadmap(roadmap_name)
    chosen = roadmap.step(step)
    scale = get_preset(preset)
    arch, recipe, data = apply_preset(scale, chosen.arch, chosen.recipe, DataSpec(), epochs=1)
    workers = scale.workers if scale.workers is not None else default_workers()
    torch.set_num_threads(cpu_threads(1, workers))
    memory_format = torch.channels_last if scale.channels_last else torch.contiguous_format

    first, later, pure = [], [], []
    for repeat in range(repeats):
        datasets = build_datasets(data, recipe)
        loaders = build_loaders(datasets, recipe.batch_size, workers=workers, seed=repeat)
        # The pure steps get the batches the first harness epoch will see, normalized and erased.
        loaders[0].sampler.set_epoch(0)
        batches = [(images.contiguous(memory_format=memory_format), labels) for images, labels in loaders[0]]
        datasets = build_datasets(data, recipe)  # afresh: nothing kept
        loaders = build_loaders(datasets, recipe.batch_size, workers=workers, seed=repeat)
        model = build_model(arch, datasets.num_classes).to(memory_format=memory_format)
        pure.append(pure_step_seconds(model, recipe, batches, datasets.num_classes))
        first.append(harness_epoch(arch, recipe, datasets, loaders, step, repeat, scale.channels_last))
        later.append(harness_epoch(arch, recipe, datasets, loaders, step, repeat, scale.channels_last))

    pure_s = statistics.median(pure)
    click.echo(f"{step} at preset {preset}: {datasets.description}, batch {recipe.batch_size}, fp32, "
               f"{'channels_last' if scale.channels_last else 'contiguous'}, cpu ({torch.get_num_threads()} "
               f"threads), {workers} loader worker(s); {repeats} repeats of (pure, first, later), each one "
               "epoch; medians, spread = (max - min) / median")
    click.echo(f"pure model steps (forward + backward + {recipe.optimizer}, batches in memory): "
               f"{pure_s:.2f} s/epoch (spread {_spread(pure):.0f} %)")
    overheads = {}
    for label, epochs in (("first step of a study (augmentations run)", first),
                          ("later steps (augmented items kept from the first)", later)):
        times, waits = [seconds for seconds, _ in epochs], [wait for _, wait in epochs]
        # Each repeat's harness epoch against the pure epoch timed just before it: drift cancels out.
        ratios = [harness / reference for harness, reference in zip(times, pure)]
        overheads[label] = statistics.median(ratios) - 1
        click.echo(f"through the harness, {label}: {statistics.median(times):.2f} s/epoch (spread "
                   f"{_spread(times):.0f} %); overhead {100 * overheads[label]:+.1f} % of the pure model step time "
                   f"(median of the {repeats} paired ratios, range {100 * (min(ratios) - 1):+.0f} to "
                   f"{100 * (max(ratios) - 1):+.0f} %)")
        # Within one run, so free of run-to-run noise: the loop's wait for batches against the rest of it.
        wait_shares = [wait / max(seconds - wait, 1e-9) for seconds, wait in epochs]
        click.echo(f"  of which waiting for batches: {statistics.median(waits):.2f} s/epoch, "
                   f"+{100 * statistics.median(wait_shares):.1f} % on the rest of the same epoch")
    sharing = sum(other.recipe == chosen.recipe for other in roadmap.steps)
    first_overhead, later_overhead = overheads.values()
    study_overhead = (first_overhead + (sharing - 1) * later_overhead) / sharing
    click.echo(f"over the {sharing} steps of {roadmap_name} with the {recipe.name} recipe (one first, "
               f"{sharing - 1} later; equal model cost assumed): overhead {100 * study_overhead:+.1f} %")


def _spread(times: list[float]) -> float:
    return 100 * (max(times) - min(times)) / statistics.median(times)


if __name__ == "__main__":
    main()
