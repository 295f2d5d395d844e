"""The leave-one-out chart: what each step is worth inside the final model, Δ with its 95 % interval, sorted."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..schema import Status
from ..variants import RoadmapInfo
from .figure_data import SIGNIFICANCE_MARKS, SIGNIFICANCE_MEANINGS, significance_mark
from .plot_data import study_label

STUDY_COLOR = "#3b6fb6"
SIGNIFICANT_COLOR = "#c0392b"
PAPER_COLOR = "#e07b39"
# Characters per caption line at 8 pt on the figure's 9.5 inches.
CAPTION_CHARS = 140
# How each kind of evidence draws its interval: over seeds solid, over one seed's images dotted.
INTERVAL_STYLES = {"welch": "-", "mcnemar": ":"}


@dataclass(frozen=True)
class LeftOutRow:
    """One variant of the final model with one step left out."""

    label: str
    step: str
    delta: float  # points, variant minus final
    ci_low: float
    ci_high: float
    test: str  # "welch", "mcnemar" or ""
    status: str
    note: str
    # The paper's Δ when this step was added to its chain, negated: what leaving it out would cost if steps added
    # up (points, ImageNet-1K; NaN where the paper has no number for the step or its parent).
    paper_delta: float = math.nan

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0  # NaN compares False

    @property
    def seed_level(self) -> bool:
        """Significant over seeds (Welch), not only over one seed's validation images."""
        return self.significant and self.test == "welch"


@dataclass(frozen=True)
class LeaveOneOutData:
    title: str
    final: str
    caption: str
    paper_source: str
    rows: tuple[LeftOutRow, ...]  # measured ones sorted by Δ (most harmful to leave out first), then the rest
    not_drawn: tuple[LeftOutRow, ...]  # identical, unbuildable or without a Δ yet


def leave_one_out_data(summary: pd.DataFrame, roadmap) -> LeaveOneOutData | None:
    """The chart's rows from a leave-one-out summary; None for a cumulative one."""
    if summary.empty or str(summary["ablation"].iloc[0]) != "leave-one-out":
        return None
    finals = summary.loc[summary["baseline"].fillna("") == "", "variant"]
    paper = paper_step_deltas(roadmap)
    rows, not_drawn = [], []
    for record in summary[summary["baseline"].fillna("") != ""].to_dict("records"):
        row = LeftOutRow(label=str(record["label"]), step=str(record["step"]), delta=float(record["delta_top1"]),
                         ci_low=float(record["delta_ci_low"]), ci_high=float(record["delta_ci_high"]),
                         test=str(record["delta_test"] or ""), status=str(record["status"]),
                         note=str(record["note"] or ""), paper_delta=-paper.get(str(record["step"]), math.nan))
        (rows if math.isfinite(row.delta) else not_drawn).append(row)
    rows.sort(key=lambda row: row.delta)
    final = str(finals.iloc[0]) if len(finals) else "?"
    return LeaveOneOutData(title=f"{roadmap.title}: each step left out of the final model ({final})", final=final,
                           caption=study_label(summary, roadmap).description, paper_source=roadmap.paper_source,
                           rows=tuple(rows), not_drawn=tuple(not_drawn))


def paper_step_deltas(roadmap: RoadmapInfo) -> dict[str, float]:
    """Each step's Δ top-1 to its parent in the paper (points), from the plan's RoadmapInfo."""
    steps = roadmap.steps
    top1 = {step.name: step.paper.get("top1", math.nan) for step in steps}
    return {step.name: top1[step.name] - top1[step.parent] for step in steps if step.parent in top1}


def draw_leave_one_out(data: LeaveOneOutData) -> Figure:
    """Δ top-1 of each variant against the final model, with its 95 % interval: red where it excludes 0 (filled
    over seeds, hollow over one seed's images only); the paper's step Δ, negated, as a diamond."""
    height = 2.8 + 0.38 * max(len(data.rows), 1)
    fig = Figure(figsize=(9.5, height), layout="constrained")
    ax = fig.subplots()
    for y, row in enumerate(data.rows):
        color = SIGNIFICANT_COLOR if row.significant else STUDY_COLOR
        if math.isfinite(row.ci_low) and math.isfinite(row.ci_high):
            ax.plot([row.ci_low, row.ci_high], [y, y], color=color, lw=2.2, alpha=0.55, solid_capstyle="butt",
                    linestyle=INTERVAL_STYLES.get(row.test, "-"))
        ax.plot(row.delta, y, marker="o", markersize=7, color=color, markeredgewidth=1.5, linestyle="none",
                markerfacecolor=color if row.seed_level else "white", zorder=3)
        if math.isfinite(row.paper_delta):
            ax.plot(row.paper_delta, y, marker="D", markersize=5, color=PAPER_COLOR, markeredgecolor="white",
                    linestyle="none", zorder=4)
        mark = significance_mark(row.test, row.delta) if row.significant else ""
        ax.annotate(f"{row.delta:+.2f}{mark}", (row.delta, y), xytext=(0, 7), textcoords="offset points",
                    ha="center", fontsize=7.5, color="#333333")
    ax.axvline(0, color="#444444", lw=1)
    ax.set_yticks(range(len(data.rows)), [row.label for row in data.rows])
    ax.set_ylim(len(data.rows) - 0.5, -0.8)
    ax.set_xlabel(f"Δ top-1 when the step is left out (points, variant − {data.final}); left of 0: the step helps")
    ax.grid(axis="x", color="#e5e5e5", lw=0.6)
    ax.margins(x=0.15)
    fig.suptitle(data.title, fontweight="bold")
    fig.legend(handles=_legend(data), loc="outside lower center", ncols=1, fontsize=8, frameon=False,
               title=_caption(data), title_fontsize=8).get_title().set_color("#444444")
    return fig


def _legend(data: LeaveOneOutData) -> list:
    handles = []
    for test in SIGNIFICANCE_MARKS:
        if any(row.significant and row.test == test for row in data.rows):
            filled = test == "welch"
            handles.append(Line2D([], [], marker="o", color=SIGNIFICANT_COLOR, lw=2.2, linestyle=INTERVAL_STYLES[test],
                                  markerfacecolor=SIGNIFICANT_COLOR if filled else "white",
                                  label=f"{'/'.join(SIGNIFICANCE_MARKS[test])} " + SIGNIFICANCE_MEANINGS[test]))
    handles.append(Line2D([], [], marker="o", color=STUDY_COLOR, markerfacecolor="white", lw=2.2,
                          label="interval includes 0"))
    if any(math.isfinite(row.paper_delta) for row in data.rows):
        handles.append(Line2D([], [], marker="D", color=PAPER_COLOR, linestyle="none",
                              label=f"{data.paper_source}: minus the step's Δ when it was added to its chain"))
    return handles


def _caption(data: LeaveOneOutData) -> str:
    caption = data.caption
    tests = {row.test for row in data.rows if math.isfinite(row.ci_low)}
    if tests:
        styles = {"welch": "solid: 95 % interval over seeds (Welch)",
                  "mcnemar": "dotted: over one seed's validation images (McNemar / paired bootstrap: evaluation "
                             "noise only)"}
        caption += "\nintervals: " + "; ".join(styles[test] for test in styles if test in tests)
    for row in data.not_drawn:
        why = row.note or ("no finished runs on both sides yet" if row.status != Status.IDENTICAL else "identical")
        caption += f"\nnot drawn: {row.label} ({why})"
    return "\n".join(textwrap.fill(line, CAPTION_CHARS) for line in caption.splitlines())
