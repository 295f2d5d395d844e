"""Our roadmap end points against torchvision's ResNet-50 and timm's ConvNeXt-T: same weights, interleaved timing.

On CUDA the defaults are timm's benchmark protocol (batch 256, 10 warm-up and 40 timed iterations) under the
numerics a training runs with (TF32, cudnn.benchmark); every figure comes with its MFU and peak memory."""
from __future__ import annotations

import math
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
from roadmap.models.complexity import count_complexity
from roadmap.training.compiled import reset_compile_cache
from roadmap.training.mfu import mfu_pct
from roadmap.training.numerics import training_numerics
from roadmap.training.throughput import BenchmarkConfig, Workload, spread_pct

# The CPU's defaults (small: a CPU is slow); CUDA's are BenchmarkConfig.timm_protocol's.
CPU_DEFAULTS = {"batch_size": 16, "repeats": 5, "iterations_per_repeat": 1, "warmup": 1}

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
    """Throughput of ours and the reference, timed in alternation (A B A B ...) so that drift hits both alike;
    their MFU (same network, same MACs) and, on CUDA, each one's peak memory above what was allocated before."""
    reset_compile_cache()  # each pair compiles afresh
    ours, reference = build_pair(pair, config.num_classes)
    gmacs = count_complexity(ours, config.image_size).gmacs
    peak = config.peak()
    workloads, memory = {}, {}
    with training_numerics(torch.device(config.device)):
        for name, model in (("ours", ours), ("reference", reference)):
            before = _allocated_mib(config.device)
            workloads[name] = Workload(model, config)
            workloads[name].warm_up()
            memory[name] = _peak_allocated_mib(config.device) - before
        samples: dict[str, dict[str, list[float]]] = {name: {"train": [], "eval": []} for name in workloads}
        for _ in range(config.repeats):
            for mode in ("train", "eval"):
                for name, workload in workloads.items():
                    timed = workload.time_train if mode == "train" else workload.time_eval
                    samples[name][mode].append(timed())
    result: dict[str, Any] = {"step": pair.step, "reference": pair.reference_name, "gmacs": gmacs,
                              "peak_source": peak.description, "ours_peak_mib": memory["ours"],
                              "reference_peak_mib": memory["reference"]}
    for mode in ("train", "eval"):
        ours_runs, reference_runs = samples["ours"][mode], samples["reference"][mode]
        # Each repeat's ratio compares two runs taken back to back: the drift between repeats cancels.
        paired_ratios = [a / b for a, b in zip(ours_runs, reference_runs)]
        ours_rate, reference_rate = statistics.median(ours_runs), statistics.median(reference_runs)
        result[mode] = {
            "ours_img_per_s": ours_rate,
            "reference_img_per_s": reference_rate,
            "ours_spread_pct": spread_pct(ours_runs),
            "reference_spread_pct": spread_pct(reference_runs),
            "ours_mfu_pct": mfu_pct(gmacs, ours_rate, peak, training=mode == "train"),
            "reference_mfu_pct": mfu_pct(gmacs, reference_rate, peak, training=mode == "train"),
            "ratio": statistics.median(paired_ratios),
            "ratio_min": min(paired_ratios),
            "ratio_max": max(paired_ratios),
        }
    return result


def _allocated_mib(device: str) -> float:
    if device != "cuda":
        return math.nan
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def _peak_allocated_mib(device: str) -> float:
    if device != "cuda":
        return math.nan
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def format_comparison(result: dict[str, Any]) -> str:
    lines = [f"{result['step']} (ours) vs {result['reference']}, same weights, {result['gmacs']:.3g} GMACs:"]
    for mode in ("train", "eval"):
        figures = result[mode]
        mfu = (f", MFU ours {figures['ours_mfu_pct']:.1f} % reference {figures['reference_mfu_pct']:.1f} %"
               if math.isfinite(figures["ours_mfu_pct"]) else "")
        lines.append(
            f"  {mode:5s}  ours {figures['ours_img_per_s']:8.2f} img/s (spread {figures['ours_spread_pct']:4.1f} %)   "
            f"reference {figures['reference_img_per_s']:8.2f} img/s (spread {figures['reference_spread_pct']:4.1f} %)"
            f"{mfu}"
        )
    if math.isfinite(result["ours_peak_mib"]):
        lines.append(f"  peak memory above what was allocated before (torch.cuda.max_memory_allocated, MiB): "
                     f"ours {result['ours_peak_mib']:.0f}, reference {result['reference_peak_mib']:.0f}")
    train, evaluation = result["train"], result["eval"]
    lines.append(
        f"  ratio ours / reference (median of per-repeat ratios, min-max): "
        f"train {train['ratio']:.3f} ({train['ratio_min']:.3f}-{train['ratio_max']:.3f}), "
        f"eval {evaluation['ratio']:.3f} ({evaluation['ratio_min']:.3f}-{evaluation['ratio_max']:.3f})"
    )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch. Default: 16 on the CPU, 256 on CUDA (timm's benchmark protocol).")
@click.option("--image-size", type=click.IntRange(min=32), default=224, show_default=True, help="Input side (px).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16 runs under torch.autocast.")
@click.option("--channels-last/--no-channels-last", default=False, show_default=True,
              help="Weights and inputs in NHWC memory format.")
@click.option("--compile/--no-compile", "compile_model", default=False, show_default=True, help="torch.compile both.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed repeats per model.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Batches per timed repeat. Default: 1 on the CPU, 8 on CUDA (5 x 8 = timm's 40).")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Untimed train and eval iterations per model before timing. Default: 1 on the CPU, 10 on CUDA.")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The GPU's dense peak in TFLOPS for MFU. Default: looked up by GPU name and precision "
              "(A100, H100, H200, L40S, RTX 4090/3090; TF32 for fp32).")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads for torch (0: torch's default).")
def main(
    device: str,
    batch_size: int,
    image_size: int,
    precision: str,
    channels_last: bool,
    compile_model: bool,
    repeats: int,
    iterations: int | None,
    warmup: int | None,
    peak_tflops: float | None,
    threads: int,
) -> None:
    """Time our `resnet50` and `separate_downsampling` steps against torchvision's ResNet-50 and timm's
    ConvNeXt-T with the same weights, same inputs and settings, interleaving the two models' repeats."""
    if threads:
        torch.set_num_threads(threads)
    given = {"batch_size": batch_size, "iterations_per_repeat": iterations, "warmup": warmup}
    settings = dict(device=device, image_size=image_size, precision=precision, channels_last=channels_last,
                    compile=compile_model, repeats=repeats, peak_tflops=peak_tflops,
                    **{key: value for key, value in given.items() if value is not None})
    if device == "cuda":
        config = BenchmarkConfig.timm_protocol(**settings)
    else:
        config = BenchmarkConfig(**{**CPU_DEFAULTS, **settings})
    click.echo(
        f"Throughput in img/s on {config.describe()}; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}.\n"
        f"Median of {config.repeats} repeats x {config.iterations_per_repeat} iterations per model after "
        f"{config.warmup} warm-up iterations, ours and reference alternating repeat by repeat.\n"
        "train = forward + backward + AdamW step; eval = torch.inference_mode forward; "
        "spread = (max - min) / median over the repeats (run-to-run noise)."
    )
    peak = config.peak()
    if peak.known:
        click.echo(f"MFU: model FLOPs (6 x MACs per trained image, 2 x per evaluated one, x img/s) in % of "
                   f"{peak.description}.")
    click.echo()
    for pair in PAIRS:
        click.echo(format_comparison(compare(pair, config)))


if __name__ == "__main__":
    main()
