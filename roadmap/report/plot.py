"""Drawing the study's figures with matplotlib: roadmap chart (Figure 2), accuracy vs GMACs and vs throughput."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

# Figures are built with matplotlib's object API, never pyplot: no GUI backend, no global figure state.
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from .figure_data import EMPTY_TEXTS, describe_data
from .label_layout import edge_bends, label_points
from .plot_data import (
    AccuracyVsGmacsData,
    AccuracyVsThroughputData,
    ChartRow,
    GroupSpan,
    Reference,
    RoadmapChartData,
    SummaryError,
    Trajectory,
    significance_legend,
)
from .repeats import FAR_FACTOR

FORMATS = ("png", "svg", "pdf")

STUDY_COLOR = "#3b6fb6"
EXPLORED_COLOR = "#9db7dd"
PAPER_COLOR = "#e07b39"
REFERENCE_COLOR = "#6b6b6b"
EMPTY_COLOR = "#9a9a9a"
BAND_COLOR = "#f2f2f2"
FLAG_COLOR = "#c0392b"
# Caption characters per inch of figure width at 8 pt (DejaVu Sans averages about 0.55 em a character).
CAPTION_CHARS_PER_INCH = 16


# ------------------------------------------------------------------------------------------- drawing


def draw_roadmap_chart(data: RoadmapChartData) -> Figure:
    """Figure 2 of the paper: one horizontal bar per step, grouped by design stage, top to bottom."""
    rows = data.rows
    n_panels = 2 if data.paper_panel else 1
    fig = Figure(figsize=(4.0 + 5.6 * n_panels, 1.9 + 0.34 * len(rows)), layout="constrained")
    axes = fig.subplots(1, 1 + n_panels, width_ratios=[0.5] + [2.6] * n_panels)
    group_axis, main = axes[0], axes[1]
    for ax in axes:  # shared by hand: subplots(sharey=True) would hide the step names of the bar axis
        if ax is not main:
            ax.sharey(main)
    positions = list(range(len(rows)))

    _draw_groups(group_axis, data.groups)
    _draw_bars(main, rows, data.groups, data.xlim, annotate_in_column=data.paper_markers)
    main.set_yticks(positions, [row.label for row in rows])
    main.set_ylim(len(rows) - 0.4, -1.3)  # first step on top; a spare row above for the reference label
    main.set_xlim(*data.xlim)
    if data.label.from_paper:
        main.set_xlabel(f"{data.label.paper_dataset} top-1 accuracy (%)")
        _draw_reference(main, data.reference)
    else:
        main.set_xlabel(f"top-1 accuracy (%), this study · {describe_data(data.label.dataset) or 'unknown data'}")
    if data.paper_markers:
        _draw_paper_markers(main, rows)
        _draw_reference(main, data.reference)
    if data.paper_panel:
        paper_axis = axes[2]
        paper_rows = [row.as_paper_row() for row in rows]
        _draw_bars(paper_axis, paper_rows, data.groups, data.paper_xlim, annotate_in_column=False)
        paper_axis.set_xlim(*data.paper_xlim)
        paper_axis.tick_params(axis="y", left=False, labelleft=False)
        paper_axis.set_xlabel(f"{data.label.paper_dataset} top-1 accuracy (%), {data.label.paper_source}")
        paper_axis.set_title(f"{data.label.paper_source}, {data.label.paper_dataset}, for comparison", fontsize=9)
        main.set_title("this study", fontsize=9)
        _draw_reference(paper_axis, data.reference)

    main.tick_params(axis="y", labelsize=9)
    fig.suptitle(data.title, fontweight="bold")
    caption = [data.label.caption, *significance_legend(rows)]
    if any(row.paper_note for row in rows) and (data.label.from_paper or data.paper_panel):
        caption.append("* GFLOPs as published; the step's conv + linear MACs differ (see the note in its step file)")
    _caption_legend(fig, "\n".join(caption), _roadmap_legend(data))
    return fig


def _draw_groups(ax, groups: Sequence[GroupSpan]) -> None:
    """Figure 2's section names in the left margin, each with a bracket over its rows."""
    ax.set_xlim(0, 1)
    ax.axis("off")
    for span in groups:
        top, bottom = span.first_row - 0.35, span.last_row + 0.35
        ax.plot([0.97, 1.0, 1.0, 0.97], [top, top, bottom, bottom], color="#555555", lw=1, clip_on=False)
        ax.text(0.93, (span.first_row + span.last_row) / 2, span.name, ha="right", va="center", fontsize=9,
                fontweight="bold", color="#333333", wrap=True)


def _draw_bars(ax, rows: Sequence[ChartRow], groups: Sequence[GroupSpan], xlim: tuple[float, float],
               annotate_in_column: bool) -> None:
    """Bars from the left edge to each row's top-1, ± std, annotated with GMACs and params; empty slots."""
    left, right = xlim
    column_transform = blended_transform_factory(ax.transAxes, ax.transData)
    background = ["white"] * len(rows)
    for index, span in enumerate(groups):
        if index % 2:  # every other design stage on a grey band
            ax.axhspan(span.first_row - 0.5, span.last_row + 0.5, color=BAND_COLOR, zorder=0, lw=0)
            background[span.first_row:span.last_row + 1] = [BAND_COLOR] * (span.last_row - span.first_row + 1)
    for y, row in enumerate(rows):
        if not row.drawn:
            ax.barh(y, right - left, left=left, height=0.62, facecolor="none", edgecolor=EMPTY_COLOR,
                    linestyle="--", lw=1, zorder=2)
            ax.text((left + right) / 2, y, row.empty_text, ha="center", va="center", fontsize=8,
                    style="italic", color=EMPTY_COLOR, zorder=3)
            continue
        std = row.top1_std if math.isfinite(row.top1_std) else None
        ax.barh(
            y, row.top1 - left, left=left, height=0.62, zorder=2,
            color=STUDY_COLOR if row.adopted else EXPLORED_COLOR, edgecolor=STUDY_COLOR, lw=0.8,
            hatch="////" if row.hatched else None,
            xerr=std, error_kw={"ecolor": "#222222", "elinewidth": 1, "capsize": 2.5, "zorder": 4},
        )
        text = row.annotation
        if annotate_in_column:
            ax.text(1.01, y, f"{row.top1:.2f} · {text}", transform=column_transform, ha="left", va="center",
                    fontsize=7.5, color="#333333")
        else:
            ax.annotate(f"{row.top1:.2f}   {text}".rstrip(), (row.top1 + (std or 0.0), y), xytext=(4, 0),
                        textcoords="offset points", ha="left", va="center", fontsize=7.5, color="#222222", zorder=5,
                        bbox={"facecolor": background[y], "edgecolor": "none", "pad": 0.6})  # hides lines behind
    if annotate_in_column:
        ax.text(1.01, -0.9, "top-1 · GMACs · params", transform=column_transform, ha="left", va="center", fontsize=7.5,
                fontweight="bold", color="#333333")
    ax.grid(axis="x", color="#dddddd", lw=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_paper_markers(ax, rows: Sequence[ChartRow]) -> None:
    for y, row in enumerate(rows):
        if math.isfinite(row.paper_top1):
            ax.plot(row.paper_top1, y, marker="D", markersize=5.5, markerfacecolor=PAPER_COLOR,
                    markeredgecolor="white", markeredgewidth=0.8, zorder=6, linestyle="none")


def _draw_reference(ax, reference: Reference | None) -> None:
    if reference is None:
        return
    ax.axvline(reference.top1, color=REFERENCE_COLOR, linestyle="--", lw=1.1, zorder=1)
    ax.text(reference.top1, -0.9, f" {reference.label} ", ha="center", va="center", fontsize=8,
            color=REFERENCE_COLOR, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1}, zorder=5)


def _roadmap_legend(data: RoadmapChartData) -> list:
    seeds = max(data.label.seeds, default=0)
    handles = [
        Patch(facecolor=STUDY_COLOR, edgecolor=STUDY_COLOR, label="adopted"),
        Patch(facecolor=EXPLORED_COLOR, edgecolor=STUDY_COLOR, hatch="////", label="explored, not adopted"),
    ]
    if data.label.from_paper and data.label.paper_has_std:
        handles.append(Line2D([], [], color="#222222", marker="|", linestyle="-", label="± 1 std (published)"))
    elif seeds > 1 and not data.label.from_paper:
        handles.append(Line2D([], [], color="#222222", marker="|", linestyle="-", label=f"± 1 std ({seeds} seeds)"))
    if data.paper_markers:
        handles.append(Line2D([], [], marker="D", color=PAPER_COLOR, linestyle="none", label=data.label.paper_source))
    empty = [EMPTY_TEXTS.get(row.status, "no result") for row in data.rows if not row.drawn]
    if empty:
        why = " or ".join(dict.fromkeys(empty))
        label = why.replace("not in this study", "not in this study (beyond --upto)")
        handles.append(Patch(facecolor="none", edgecolor=EMPTY_COLOR, linestyle="--", label=f"empty: {label}"))
    return handles


def draw_accuracy_vs_gmacs(data: AccuracyVsGmacsData) -> Figure:
    """Each step as a point: the adopted path joined by arrows, explored branches dashed off their parent."""
    n_panels = 2 if data.paper_panel else 1
    fig = Figure(figsize=(7.5 * n_panels, 6.0), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)
    study_axis = axes[0][0]
    paper_axis = axes[0][1] if data.paper_panel else study_axis
    if data.study is not None:
        _draw_trajectory(study_axis, data.study, STUDY_COLOR)
    if data.paper.points:
        _draw_trajectory(paper_axis, data.paper, PAPER_COLOR if data.study is not None else STUDY_COLOR)
    if data.reference is not None and math.isfinite(data.reference.gflops):
        paper_axis.plot(data.reference.gflops, data.reference.top1, marker="*", markersize=12, color=REFERENCE_COLOR,
                        linestyle="none", label=f"{data.reference.name} (reference)")
    for ax in dict.fromkeys([study_axis, paper_axis]):
        ax.set_xlabel("GMACs (G multiply-accumulates, conv + linear)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(color="#e5e5e5", lw=0.6)
    if data.paper_panel:
        study_axis.set_title(f"this study · {describe_data(data.label.dataset)}", fontsize=9)
        paper_axis.set_title(f"{data.label.paper_source}, {data.label.paper_dataset}", fontsize=9)
    fig.suptitle(data.title, fontweight="bold")
    caption = data.label.caption
    if data.study is not None and any(math.isfinite(p.y_low) for p in data.study.points):
        caption += f"\n{INTERVAL_CAPTION}"
    _caption_legend(fig, caption)
    if data.paper_panel:
        label_points(fig, [(study_axis, [data.study]), (paper_axis, [data.paper])])
    else:
        label_points(fig, [(study_axis, [t for t in (data.study, data.paper) if t is not None and t.points])])
    return fig


def draw_accuracy_vs_throughput(data: AccuracyVsThroughputData) -> Figure:
    """Top-1 against measured throughput (the cost the paper never reported per step), each point the median of
    its repeated measurements with their range; a point with a repeat far from the others is ringed."""
    n_panels = len(data.panels)
    fig = Figure(figsize=(7.0 * n_panels, 5.8), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)
    for ax, panel in zip(axes[0], data.panels):
        _draw_trajectory(ax, panel.trajectory, STUDY_COLOR)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"measured on {panel.setting}" if panel.setting else "", fontsize=9)
        ax.grid(color="#e5e5e5", lw=0.6)
    fig.suptitle(data.title, fontweight="bold")
    caption = [data.label.description]
    caption += [f"{panel.xlabel.split(' (')[0]}: {panel.repeats}" for panel in data.panels if panel.repeats]
    if any(point.flagged for panel in data.panels for point in panel.trajectory.points):
        caption.append(f"ringed: a repeat more than {FAR_FACTOR:g}x from the others' median — a disturbed measurement "
                       "(another process on the device?); re-measure with run_ablation.py --benchmark")
    _caption_legend(fig, "\n".join(caption))
    label_points(fig, [(ax, [panel.trajectory]) for ax, panel in zip(axes[0], data.panels)])
    return fig


INTERVAL_CAPTION = ("error bars: 95 % interval of a step's top-1, Student's t over its seeds, or with one seed "
                    "Wilson's over its validation images (evaluation noise only)")


def _draw_trajectory(ax, trajectory: Trajectory, color: str) -> None:
    with_bars = [p for p in trajectory.points if math.isfinite(p.y_low) and math.isfinite(p.y_high)]
    if with_bars:
        ax.errorbar([p.x for p in with_bars], [p.y for p in with_bars],
                    yerr=[[p.y - p.y_low for p in with_bars], [p.y_high - p.y for p in with_bars]],
                    fmt="none", ecolor=color, elinewidth=0.9, capsize=2.5, alpha=0.7, zorder=1)
    with_range = [p for p in trajectory.points if math.isfinite(p.x_low) and p.x_high > p.x_low]  # NaN: False
    if with_range:
        ax.errorbar([p.x for p in with_range], [p.y for p in with_range],
                    xerr=[[p.x - p.x_low for p in with_range], [p.x_high - p.x for p in with_range]],
                    fmt="none", ecolor=color, elinewidth=0.9, capsize=2.5, alpha=0.7, zorder=1,
                    label="range of the repeats")
    flagged = [p for p in trajectory.points if p.flagged]
    if flagged:
        ax.plot([p.x for p in flagged], [p.y for p in flagged], marker="o", markersize=13, markerfacecolor="none",
                markeredgecolor=FLAG_COLOR, markeredgewidth=1.3, linestyle="none", zorder=4,
                label=f"a repeat > {FAR_FACTOR:g}x off the others")
    adopted = [p for p in trajectory.points if p.adopted]
    explored = [p for p in trajectory.points if not p.adopted]
    ax.plot([p.x for p in adopted], [p.y for p in adopted], marker="o", markersize=6, color=color, linestyle="none",
            label=f"{trajectory.name}: adopted")
    ax.plot([p.x for p in explored], [p.y for p in explored], marker="o", markersize=6, markerfacecolor="white",
            markeredgecolor=color, markeredgewidth=1.4, linestyle="none", label=f"{trajectory.name}: explored")
    bends = edge_bends(trajectory)
    for edges, style in ((trajectory.adopted_path, "-"), (trajectory.branches, "--")):
        for start, end in edges:
            a, b = trajectory.point(start), trajectory.point(end)
            ax.annotate("", xy=(b.x, b.y), xytext=(a.x, a.y), arrowprops={
                "arrowstyle": "-|>", "color": color, "lw": 1.1, "linestyle": style, "shrinkA": 4, "shrinkB": 4,
                "mutation_scale": 10, "connectionstyle": f"arc3,rad={bends[(start, end)]}"})
    ax.margins(x=0.12, y=0.08)


def _caption_legend(fig: Figure, caption: str, handles: list | None = None) -> None:
    """One legend below the panels, titled with the caption (data set, preset, seeds, MAC convention), the
    caption wrapped to the figure's width."""
    if handles is None:  # every labelled marker set and error bar of every panel, once
        artists = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]
        artists += [container for ax in fig.axes for container in ax.containers]
        handles = list({artist.get_label(): artist for artist in artists
                        if not str(artist.get_label()).startswith("_")}.values())
    width = int(fig.get_figwidth() * CAPTION_CHARS_PER_INCH)
    wrapped = "\n".join(textwrap.fill(line, width) for line in caption.splitlines())
    legend = fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5) or 1, fontsize=8,
                        frameon=False, title=wrapped, title_fontsize=8)
    legend.get_title().set_color("#444444")


# --------------------------------------------------------------------------------------------- files


def save_figure(
    fig: Figure, out_dir: Path | str, stem: str, formats: Sequence[str] = ("png", "svg"), dpi: int = 200
) -> list[Path]:
    """Write `out_dir/stem.<format>` for each format; return the paths written."""
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise SummaryError(f"unknown figure format {unknown[0]!r}; valid formats: {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fig.savefig(path, dpi=dpi if fmt == "png" else None)
        paths.append(path)
    return paths


def draw_figures(summary, roadmap, out_dir: Path | str, formats: Sequence[str] = ("png", "svg"),
                 dpi: int = 200) -> list[tuple[str, list[Path], str]]:
    """Every figure of a summary into `out_dir`: (stem, files written, why it was skipped) per figure.

    `roadmap` is the RoadmapInfo of the plan the summary comes from. A cumulative study gets the roadmap chart
    (the paper's Figure 2); a leave-one-out study gets what each step is worth inside the final model."""
    from .leave_one_out import draw_leave_one_out, leave_one_out_data
    from .plot_data import accuracy_vs_gmacs_data, accuracy_vs_throughput_data, roadmap_chart_data

    gmacs = accuracy_vs_gmacs_data(summary, roadmap)
    throughput = accuracy_vs_throughput_data(summary, roadmap)
    left_out = leave_one_out_data(summary, roadmap)
    chart = ("leave_one_out", draw_leave_one_out(left_out), "") if left_out is not None else (
        "roadmap", draw_roadmap_chart(roadmap_chart_data(summary, roadmap)), "")
    figures = [
        chart,
        ("accuracy_vs_gmacs", gmacs and draw_accuracy_vs_gmacs(gmacs), "no variant has both GMACs and a top-1"),
        ("accuracy_vs_throughput", throughput and draw_accuracy_vs_throughput(throughput),
         "no variant recorded a throughput (run_ablation.py --benchmark measures it)"),
    ]
    return [(stem, save_figure(figure, out_dir, stem, formats, dpi=dpi) if figure is not None else [],
             why_not if figure is None else "") for stem, figure, why_not in figures]
