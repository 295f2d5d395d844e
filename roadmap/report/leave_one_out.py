"""The leave-one-out chart: what each step is worth inside the final model, Δ with its 95 % interval, sorted."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..schema import Status
from .plot_data import TEST_LABELS, study_label
from .stats import CONFIDENCE_LEVEL

STUDY_COLOR = "#3b6fb6"
SIGNIFICANT_COLOR = "#c0392b"
# Characters per caption line at 8 pt on the figure's 9.5 inches.
CAPTION_CHARS = 140


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

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0  # NaN compares False


@dataclass(frozen=True)
class LeaveOneOutData:
    title: str
    final: str
    caption: str
    rows: tuple[LeftOutRow, ...]  # measured ones sorted by Δ (most harmful to leave out first), then the rest
    not_drawn: tuple[LeftOutRow, ...]  # identical, unbuildable or without a Δ yet


def leave_one_out_data(summary: pd.DataFrame, roadmap) -> LeaveOneOutData | None:
    """The chart's rows from a leave-one-out summary; None for a cumulative one."""
    if summary.empty or str(summary["ablation"].iloc[0]) != "leave-one-out":
        return None
    finals = summary.loc[summary["baseline"].fillna("") == "", "variant"]
    rows, not_drawn = [], []
    for record in summary[summary["baseline"].fillna("") != ""].to_dict("records"):
        row = LeftOutRow(label=str(record["label"]), step=str(record["step"]), delta=float(record["delta_top1"]),
                         ci_low=float(record["delta_ci_low"]), ci_high=float(record["delta_ci_high"]),
                         test=str(record["delta_test"] or ""), status=str(record["status"]),
                         note=str(record["note"] or ""))
        (rows if math.isfinite(row.delta) else not_drawn).append(row)
    rows.sort(key=lambda row: row.delta)
    final = str(finals.iloc[0]) if len(finals) else "?"
    return LeaveOneOutData(title=f"{roadmap.title}: each step left out of the final model ({final})", final=final,
                           caption=study_label(summary, roadmap).caption, rows=tuple(rows),
                           not_drawn=tuple(not_drawn))


def draw_leave_one_out(data: LeaveOneOutData) -> Figure:
    """Δ top-1 of each variant against the final model, with its 95 % interval; significant ones in red."""
    height = 2.4 + 0.38 * max(len(data.rows), 1)
    fig = Figure(figsize=(9.5, height), layout="constrained")
    ax = fig.subplots()
    for y, row in enumerate(data.rows):
        color = SIGNIFICANT_COLOR if row.significant else STUDY_COLOR
        if math.isfinite(row.ci_low) and math.isfinite(row.ci_high):
            ax.plot([row.ci_low, row.ci_high], [y, y], color=color, lw=2.2, alpha=0.55, solid_capstyle="butt")
        ax.plot(row.delta, y, marker="o", markersize=7, color=color, markerfacecolor=color if row.significant
                else "white", markeredgewidth=1.5, linestyle="none", zorder=3)
        ax.annotate(f"{row.delta:+.2f}" + (f" ({row.test})" if row.test else ""), (row.delta, y), xytext=(0, 7),
                    textcoords="offset points", ha="center", fontsize=7.5, color="#333333")
    ax.axvline(0, color="#444444", lw=1)
    ax.set_yticks(range(len(data.rows)), [row.label for row in data.rows])
    ax.set_ylim(len(data.rows) - 0.5, -0.8)
    ax.set_xlabel(f"Δ top-1 when the step is left out (points, variant − {data.final}); left of 0: the step helps")
    ax.grid(axis="x", color="#e5e5e5", lw=0.6)
    ax.margins(x=0.15)
    fig.suptitle(data.title, fontweight="bold")
    tests = sorted({row.test for row in data.rows if row.test})
    handles = [
        Line2D([], [], marker="o", color=SIGNIFICANT_COLOR, lw=2.2,
               label=f"{100 * CONFIDENCE_LEVEL:g} % interval excludes 0"),
        Line2D([], [], marker="o", color=STUDY_COLOR, markerfacecolor="white", lw=2.2, label="interval includes 0"),
    ]
    caption = data.caption + "".join(f"\n{test}: {TEST_LABELS.get(test, test)}" for test in tests)
    for row in data.not_drawn:
        why = row.note or ("no finished runs on both sides yet" if row.status != Status.IDENTICAL else "identical")
        caption += f"\nnot drawn: {row.label} ({why})"
    wrapped = "\n".join(textwrap.fill(line, CAPTION_CHARS) for line in caption.splitlines())
    legend = fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False,
                        title=wrapped, title_fontsize=8)
    legend.get_title().set_color("#444444")
    return fig
