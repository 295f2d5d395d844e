"""Our roadmap end points against torchvision's ResNet-50 and timm's ConvNeXt-T: same weights, interleaved timing."""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import timm
import torch
import torchvision
from torch import nn

from roadmap import build_model, load_roadmap
from roadmap.interop import export_state_dict
from roadmap.training.throughput import BenchmarkConfig, Workload, spread_pct

ROADMAP = "resnet50_to_convnext_t"


@dataclass(frozen=True)
class Pair:
    # Our step whose network is the reference network.
    step: str
    # roadmap.interop target naming the reference's state-dict layout.
    interop: str
    # What the reference is, for the printout.
    reference_name: str
    # Builds the reference from our step's drop-path rate (stochastic depth costs time in training).
    build_reference: Callable[[float], nn.Module]


PAIRS = (
    Pair("resnet50", "torchvision.resnet", "torchvision.models.resnet50()", lambda _: torchvision.models.resnet50()),
    Pair(
        "separate_downsampling",
        "timm.convnext",
        'timm.create_model("convnext_tiny")',
        lambda drop_path_rate: timm.create_model("convnext_tiny", drop_path_rate=drop_path_rate),
    ),
)


def build_pair(pair: Pair, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Our network of `pair.step` and the reference, holding the same weights."""
    arch = load_roadmap(ROADMAP).step(pair.step).arch
    ours = build_model(arch, num_classes)
    reference = pair.build_reference(arch.drop_path_rate)
    reference.load_state_dict(export_state_dict(ours, pair.interop), strict=True)
    return ours, reference


def compare(pair: Pair, config: BenchmarkConfig) -> dict[str, Any]:
    """Throughput of ours and the reference, timed in alternation (A B A B ...) so that drift hits both alike."""
    ours, reference = build_pair(pair, config.num_classes)
    workloads = {"ours": Workload(ours, config), "reference": Workload(reference, config)}
    for workload in workloads.values():
        workload.warm_up()
    samples: dict[str, dict[str, list[float]]] = {name: {"train": [], "eval": []} for name in workloads}
    for _ in range(config.repeats):
        for mode in ("train", "eval"):
            for name, workload in workloads.items():
                timed = workload.time_train if mode == "train" else workload.time_eval
                samples[name][mode].append(timed())
    result: dict[str, Any] = {"step": pair.step, "reference": pair.reference_name}
    for mode in ("train", "eval"):
        ours_runs, reference_runs = samples["ours"][mode], samples["reference"][mode]
        # Each repeat's ratio compares two runs taken back to back: the drift between repeats cancels.
        paired_ratios = [a / b for a, b in zip(ours_runs, reference_runs)]
        result[mode] = {
            "ours_img_per_s": statistics.median(ours_runs),
            "reference_img_per_s": statistics.median(reference_runs),
            "ours_spread_pct": spread_pct(ours_runs),
            "reference_spread_pct": spread_pct(reference_runs),
            "ratio": statistics.median(paired_ratios),
            "ratio_min": min(paired_ratios),
            "ratio_max": max(paired_ratios),
        }
    return result


def format_comparison(result: dict[str, Any]) -> str:
    lines = [f"{result['step']} (ours) vs {result['reference']}, same weights:"]
    for mode in ("train", "eval"):
        figures = result[mode]
        lines.append(
            f"  {mode:5s}  ours {figures['ours_img_per_s']:8.2f} img/s (spread {figures['ours_spread_pct']:4.1f} %)   "
            f"reference {figures['reference_img_per_s']:8.2f} img/s (spread {figures['reference_spread_pct']:4.1f} %)"
        )
    train, evaluation = result["train"], result["eval"]
    lines.append(
        f"  ratio ours / reference (median of per-repeat ratios, min-max): "
        f"train {train['ratio']:.3f} ({train['ratio_min']:.3f}-{train['ratio_max']:.3f}), "
        f"eval {evaluation['ratio']:.3f} ({evaluation['ratio_min']:.3f}-{evaluation['ratio_max']:.3f})"
    )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images per batch.")
@click.option("--image-size", type=click.IntRange(min=32), default=224, show_default=True, help="Input side (px).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16 runs under torch.autocast.")
@click.option("--channels-last/--no-channels-last", default=False, show_default=True,
              help="Weights and inputs in NHWC memory format.")
@click.option("--compile/--no-compile", "compile_model", default=False, show_default=True, help="torch.compile both.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed repeats per model.")
@click.option("--iterations", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batches per timed repeat.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed train and eval iterations per model before timing.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads for torch (0: torch's default).")
def main(
    device: str,
    batch_size: int,
    image_size: int,
    precision: str,
    channels_last: bool,
    compile_model: bool,
    repeats: int,
    iterations: int,
    warmup: int,
    threads: int,
) -> None:
    """Time our `resnet50` and `separate_downsampling` steps against torchvision's ResNet-50 and timm's
    ConvNeXt-T with the same weights, same inputs and settings, interleaving the two models' repeats."""
    if threads:
        torch.set_num_threads(threads)
    config = BenchmarkConfig(
        device=device,
        batch_size=batch_size,
        image_size=image_size,
        precision=precision,
        channels_last=channels_last,
        compile=compile_model,
        warmup=warmup,
        repeats=repeats,
        iterations_per_repeat=iterations,
    )
    click.echo(
        f"Throughput in img/s on {config.describe()}; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}.\n"
        f"Median of {repeats} repeats x {iterations} iterations per model after {warmup} warm-up iterations, "
        "ours and reference alternating repeat by repeat.\n"
        "train = forward + backward + AdamW step; eval = torch.inference_mode forward; "
        "spread = (max - min) / median over the repeats (run-to-run noise).\n"
    )
    for pair in PAIRS:
        click.echo(format_comparison(compare(pair, config)))


if __name__ == "__main__":
    main()
