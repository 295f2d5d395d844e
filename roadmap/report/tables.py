"""The study's table as files, roadmap.csv (every number at full precision) and roadmap.md (readable), and as the
terminal prints it at the end of a study (the essential columns in 100 characters)."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..schema import Artifact, Status
from .figure_data import SIGNIFICANCE_MARKS, SIGNIFICANCE_MEANINGS, describe_data, significance_mark
from .results import agreement, joined
from .significance import TEST_MEANINGS

# The terminal summary's width: an ordinary terminal's, with a margin.
TERMINAL_WIDTH = 100

AGREEMENT_CAVEAT = ("synthetic, CIFAR or small-resolution studies are not expected to follow ImageNet's "
                    "numbers; the line says how far this one does")


def write_results(summary: pd.DataFrame, out_dir: Path, paper_table: str = "",
                  power_line: str = "") -> tuple[Path, Path]:
    """out_dir/roadmap.csv and out_dir/roadmap.md; `paper_table` names where the paper columns come from,
    `power_line` how many Δs the study could resolve (roadmap.report.power)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / Artifact.SUMMARY_CSV, out_dir / Artifact.SUMMARY_MD
    summary.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(summary, paper_table, power_line))
    return csv_path, md_path


def agreement_line(summary: pd.DataFrame, paper_table: str = "") -> str:
    return agreement(summary).describe(paper_table or "its table")


def to_markdown(summary: pd.DataFrame, paper_table: str = "", power_line: str = "") -> str:
    """The summary as a Markdown table with a header saying what every number is."""
    seeds = sorted({int(s) for text in summary["seeds"] for s in str(text).split(",") if s.strip()})
    roadmap = joined(summary["roadmap"]) or "?"
    report = joined(summary["report"]) or "last"
    ablation = joined(summary["ablation"]) or "cumulative"
    source = f"Liu et al. 2022, {paper_table}" if paper_table else "Liu et al. 2022"
    if ablation == "leave-one-out":
        final = summary.loc[summary["baseline"] == "", "variant"]
        compared = (f"Δ is against the final model ({final.iloc[0] if len(final) else '?'}), variant minus final: "
                    "a negative Δ means the step left out helps")
    else:
        compared = "Δ is against the step's parent (the previous adopted step; for an explored branch, its base)"
    lines = [
        f"# {roadmap} ({ablation})",
        "",
        f"Data set: {describe_data(joined(summary['dataset'])) or 'none trained yet'} · "
        f"preset: {joined(summary['preset']) or '–'} · seeds in this table: {_seed_list(seeds)}. "
        f"Top-1 is the {'last' if report == 'last' else 'best'} epoch's, mean ± sample std over finished seeds. "
        f"{compared}, in points, with its 95 % confidence interval and p-value, all from the data its basis names; "
        "▲/▼ mark an interval over seeds that excludes 0, △/▽ one over a single seed's validation images. "
        "GMACs and the paper's GFLOPs are both multiply-accumulates of conv and linear layers only; ours are at "
        "this study's resolution and width, the paper's at 224 px and full width. Throughput (img/s) is on "
        f"this study's device, batch and precision; peak memory in MiB. Paper columns: ImageNet-1K, {source}.",
        "",
    ]
    bench = summary[["bench_train_img_per_s", "bench_eval_img_per_s", "bench_peak_memory_mib"]].notna().any().any()
    header = ["#", "variant", "group", f"top-1 (%, {report} epoch)", "Δ top-1", "95 % CI", "p", "test", "Δ basis",
              "paper top-1", "paper Δ", "GMACs (ours)", "paper GFLOPs", "params (M)", "train img/s", "eval img/s",
              "peak mem (MiB)"]
    if bench:
        header += ["bench train img/s", "bench eval img/s", "bench peak mem (MiB)"]
    header += ["finished seeds", "status", "note"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in summary.to_dict("records"):
        significant = row["delta_ci_low"] > 0 or row["delta_ci_high"] < 0
        mark = significance_mark(_text(row["delta_test"]), row["delta_top1"]) if significant else ""
        cells = [
            str(row["order"]),
            row["variant"] if row["adopted"] else f"_{row['variant']}_ (explored)",
            row["group"],
            _pm(row["top1_mean"], row["top1_std"]),
            _number(row["delta_top1"], "{:+.2f}") + (f" {mark}" if mark else ""),
            _interval(row["delta_ci_low"], row["delta_ci_high"]),
            _number(row["delta_p"], "{:.2g}"),
            _text(row["delta_test"]) or "–",
            _text(row["delta_basis"]) or "–",
            _pm(row["paper_top1"], row["paper_top1_std"]),
            _number(row["paper_delta_top1"], "{:+.2f}"),
            _number(row["gmacs"], "{:.4g}"),  # 4.089 at the paper's scale, 0.006312 at the demo's
            _number(row["paper_gflops"], "{:.2f}"),
            _number(row["params"] / 1e6, "{:.2f}"),
            _number(row["train_img_per_s"], "{:.0f}"),
            _number(row["eval_img_per_s"], "{:.0f}"),
            _number(row["peak_memory_mib"], "{:.0f}"),
        ]
        if bench:
            cells += [_number(row[column], fmt) for column, fmt in (
                ("bench_train_img_per_s", "{:.0f}"), ("bench_eval_img_per_s", "{:.0f}"),
                ("bench_peak_memory_mib", "{:.0f}"))]
        cells += [_finished_seeds(row), row["status"], row["note"] or ""]
        lines.append("| " + " | ".join(cells) + " |")
    tests = [test for test in TEST_MEANINGS if test in set(summary["delta_test"])]
    lines += [""] + [f"- test `{test}`: {TEST_MEANINGS[test]}." for test in tests]
    lines += ["", f"{agreement_line(summary, paper_table)} ({AGREEMENT_CAVEAT})."]
    lines += [power_line] if power_line else []  # how many of its Δs the study could resolve
    return "\n".join(lines) + "\n"


def terminal_summary(summary: pd.DataFrame, paper_table: str = "", power_line: str = "",
                     seeds_asked: Sequence[int] = ()) -> str:
    """What the terminal shows at the end of a study, every line within TERMINAL_WIDTH characters: what the
    numbers are, one line per variant (top-1 ± std over seeds, Δ with its 95 % interval and what kind of evidence
    it is, finished seeds), what the marks mean, the agreement with the paper and `power_line`. The full table is
    in roadmap.md and roadmap.csv."""
    ablation = joined(summary["ablation"]) or "cumulative"
    report = joined(summary["report"]) or "last"
    asked = sorted(seeds_asked) or sorted({int(s) for text in summary["seeds"] for s in str(text).split(",") if s})
    data = describe_data(joined(summary["dataset"]), joined(summary["data_kind"])) or "no run finished yet"
    if joined(summary["data_kind"]) == "synthetic":
        data = "SYNTHETIC data (not comparable with ImageNet): " + data.removeprefix("synthetic: ")
    compared = ("Δ: points against the final model (variant − final; below 0: the step left out helps)"
                if ablation == "leave-one-out" else
                "Δ: points against the step's parent (an explored step: against its base)")
    head = [f"{joined(summary['roadmap']) or '?'} ({ablation}), preset {joined(summary['preset']) or '–'}, "
            f"seeds asked: {_seed_list(asked)}", data,
            f"top-1 of the {report} epoch (%), mean ± std over the finished seeds"]
    lines = [textwrap.fill(line, TERMINAL_WIDTH, subsequent_indent="  ") for line in head]
    lines.append(f"{'#':>2}  {'variant':<31} {'top-1 (%)':<14} {'Δ top-1 [95 % interval]':<27} {'seeds':<7} status")
    for row in summary.to_dict("records"):
        name = str(row["variant"]) + ("" if row["adopted"] else " (explored)")
        line = (f"{int(row['order']):>2}  {name:<31} {_pm(row['top1_mean'], row['top1_std']):<14} "
                f"{_delta_cell(row):<27} {_seed_count(row, len(asked)):<7} {_status_cell(row)}").rstrip()
        lines.append(line if len(line) <= TERMINAL_WIDTH else line[:TERMINAL_WIDTH - 1] + "…")  # the md has it all
    tests = [test for test in SIGNIFICANCE_MARKS if any(_significant(row) and _text(row["delta_test"]) == test
                                                        for row in summary.to_dict("records"))]
    notes = [compared] + [f"{'/'.join(SIGNIFICANCE_MARKS[test])} {SIGNIFICANCE_MEANINGS[test]}" for test in tests]
    notes += [f"{agreement_line(summary, paper_table)} ({AGREEMENT_CAVEAT})."]
    notes += [power_line] if power_line else []
    return "\n".join(lines + [textwrap.fill(note, TERMINAL_WIDTH, subsequent_indent="  ") for note in notes])


def _delta_cell(row: dict) -> str:
    if pd.isna(row["delta_top1"]):
        return "–"
    cell = f"{row['delta_top1']:+.2f}"
    if not pd.isna(row["delta_ci_low"]) and not pd.isna(row["delta_ci_high"]):
        cell += f" {_interval(row['delta_ci_low'], row['delta_ci_high'])}"
    mark = significance_mark(_text(row["delta_test"]), row["delta_top1"]) if _significant(row) else ""
    return f"{cell} {mark}".rstrip()


def _significant(row: dict) -> bool:
    return bool(row["delta_ci_low"] > 0 or row["delta_ci_high"] < 0)  # NaN compares False


def _seed_count(row: dict, asked: int) -> str:
    """"3 of 3": finished seeds of the seeds asked for."""
    finished = int(row["n_seeds"]) if not pd.isna(row["n_seeds"]) else 0
    return f"{finished} of {asked}" if asked else str(finished)


def _status_cell(row: dict) -> str:
    status = str(row["status"])
    if status == Status.FINISHED:
        return ""
    note = _text(row["note"])
    return f"{status}: {note}" if note else status


def _finished_seeds(row: dict) -> str:
    """The md table's seeds cell: "3 (0,1,2)": how many finished, and which."""
    seeds = _text(row["seeds"])
    count = len([s for s in seeds.split(",") if s.strip()])
    return f"{count} ({seeds})" if count else "0"


def _seed_list(seeds: Sequence[int]) -> str:
    """"0,1,2 (3 seeds)"."""
    if not seeds:
        return "none"
    return f"{','.join(map(str, seeds))} ({len(seeds)} seed{'' if len(seeds) == 1 else 's'})"


def _text(value) -> str:
    """A text cell: "" for an empty one (NaN in a hand-made or CSV-read table)."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _number(value: float, form: str) -> str:
    return "–" if value is None or pd.isna(value) else form.format(value)


def _interval(low: float, high: float) -> str:
    return "–" if pd.isna(low) or pd.isna(high) else f"[{low:+.2f}, {high:+.2f}]"


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"
