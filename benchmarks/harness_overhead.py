"""What data loading and logging add to the pure model step of one training epoch, at a preset's scale."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
import torch

from roadmap import DataSpec, build_model, load_roadmap
from roadmap.cli import OneLineErrors
from roadmap.data import build_datasets, build_loaders
from roadmap.engine import TrainOptions, build_loss, build_optimizer, train_and_evaluate
from roadmap.presets import apply_preset, get_preset
from roadmap.study import cpu_threads


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


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--step", default="modern_recipe", show_default=True, help="Roadmap step whose network trains.")
@click.option("--roadmap", "roadmap_name", default="resnet50_to_convnext_t", show_default=True)
@click.option("--preset", default="demo", show_default=True, help="Scale (data size, resolution, width, batch).")
@click.option("--repeats", default=3, show_default=True, help="Epochs timed each way; the median is reported.")
def main(step: str, roadmap_name: str, preset: str, repeats: int) -> None:
    """Time one training epoch through the harness (data loader, augmentation, Mixup, progress, checkpoint,
    MLflow logging) against the same number of pure model steps on pre-loaded batches, on this CPU."""
    chosen = load_roadmap(roadmap_name).step(step)
    arch, recipe, data = apply_preset(get_preset(preset), chosen.arch, chosen.recipe, DataSpec(), epochs=1)
    torch.set_num_threads(cpu_threads(1, data.workers))
    datasets = build_datasets(data, recipe)
    train_loader, val_loader = build_loaders(datasets, recipe.batch_size, workers=data.workers, seed=0)

    harness, pure = [], []
    for repeat in range(repeats):
        from roadmap.tracking import Tracker

        with tempfile.TemporaryDirectory() as scratch:
            tracker = Tracker(f"sqlite:///{scratch}/mlflow.db", "overhead")
            model = build_model(arch, datasets.num_classes)
            options = TrainOptions(checkpoint_dir=Path(scratch) / "checkpoint", seed=repeat, progress=True)
            with tracker.step_run(step, repeat, "overhead", params={}, tags={}, config={}) as run:
                result = train_and_evaluate(model, recipe, train_loader, val_loader, num_classes=datasets.num_classes,
                                            options=options, on_epoch=lambda r: run.log_epoch(r, r["epoch"]))
            # The whole call minus its evaluation: set-up, the train loop, checkpoint and MLflow logging.
            harness.append(result["wall_time_s"] - len(datasets.val) / result["eval_img_per_s"])
        train_loader.sampler.set_epoch(repeat)
        batches = list(train_loader)
        pure.append(pure_step_seconds(build_model(arch, datasets.num_classes), recipe, batches, datasets.num_classes))

    harness_s, pure_s = statistics.median(harness), statistics.median(pure)
    click.echo(f"{step} at preset {preset}: {datasets.description}, batch {recipe.batch_size}, fp32, "
               f"cpu ({torch.get_num_threads()} threads), {data.workers} loader worker(s); median of {repeats} epochs")
    click.echo(f"pure model steps (forward + backward + {recipe.optimizer}, batches in memory): {pure_s:.2f} s/epoch")
    click.echo(f"through the harness (loader, augmentation, mixup, progress, checkpoint, MLflow): "
               f"{harness_s:.2f} s/epoch")
    click.echo(f"harness overhead: {100 * (harness_s / pure_s - 1):+.1f} % of the pure model step time")


if __name__ == "__main__":
    main()
