"""The study's table as files: roadmap.csv (every number at full precision) and roadmap.md (readable)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..schema import Artifact
from .results import agreement, joined
from .significance import TEST_MEANINGS

AGREEMENT_CAVEAT = ("synthetic, CIFAR or small-resolution studies are not expected to follow ImageNet's "
                    "numbers; the line says how far this one does")


def write_results(summary: pd.DataFrame, out_dir: Path, paper_table: str = "") -> tuple[Path, Path]:
    """out_dir/roadmap.csv and out_dir/roadmap.md; `paper_table` names where the paper columns come from."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / Artifact.SUMMARY_CSV, out_dir / Artifact.SUMMARY_MD
    summary.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(summary, paper_table))
    return csv_path, md_path


def agreement_line(summary: pd.DataFrame, paper_table: str = "") -> str:
    return agreement(summary).describe(paper_table or "its table")


def to_markdown(summary: pd.DataFrame, paper_table: str = "") -> str:
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
        f"Data set: {joined(summary['dataset']) or 'none trained yet'} · "
        f"preset: {joined(summary['preset']) or '–'} · seeds in this table: {','.join(map(str, seeds)) or 'none'}. "
        f"Top-1 is the {'last' if report == 'last' else 'best'} epoch's, mean ± sample std over finished seeds. "
        f"{compared}, in points, with its 95 % confidence interval and p-value, all from the data its basis names; "
        "* marks an interval that excludes 0. "
        "GMACs and the paper's GFLOPs are both multiply-accumulates of conv and linear layers only; ours are at "
        "this study's resolution and width, the paper's at 224 px and full width. Throughput (img/s) is on "
        f"this study's device, batch and precision; peak memory in MiB. Paper columns: ImageNet-1K, {source}.",
        "",
    ]
    bench = summary[["bench_train_img_per_s", "bench_eval_img_per_s", "bench_peak_memory_mb"]].notna().any().any()
    header = ["#", "variant", "group", f"top-1 (%, {report} epoch)", "Δ top-1", "95 % CI", "p", "test", "Δ basis",
              "paper top-1", "paper Δ", "GMACs (ours)", "paper GFLOPs", "params (M)", "train img/s", "eval img/s",
              "peak mem (MiB)"]
    if bench:
        header += ["bench train img/s", "bench eval img/s", "bench peak mem (MiB)"]
    header += ["seeds", "status", "note"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in summary.to_dict("records"):
        significant = row["delta_ci_low"] > 0 or row["delta_ci_high"] < 0
        cells = [
            str(row["order"]),
            row["variant"] if row["adopted"] else f"_{row['variant']}_ (explored)",
            row["group"],
            _pm(row["top1_mean"], row["top1_std"]),
            _number(row["delta_top1"], "{:+.2f}") + (" *" if significant else ""),
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
            _number(row["peak_memory_mb"], "{:.0f}"),
        ]
        if bench:
            cells += [_number(row[column], fmt) for column, fmt in (
                ("bench_train_img_per_s", "{:.0f}"), ("bench_eval_img_per_s", "{:.0f}"),
                ("bench_peak_memory_mb", "{:.0f}"))]
        cells += [str(row["seeds"]) or "–", row["status"], row["note"] or ""]
        lines.append("| " + " | ".join(cells) + " |")
    tests = [test for test in TEST_MEANINGS if test in set(summary["delta_test"])]
    lines += [""] + [f"- test `{test}`: {TEST_MEANINGS[test]}." for test in tests]
    lines += ["", f"{agreement_line(summary, paper_table)} ({AGREEMENT_CAVEAT})."]
    return "\n".join(lines) + "\n"


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
