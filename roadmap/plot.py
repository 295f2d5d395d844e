"""The study's figures: the roadmap chart (the paper's Figure 2), accuracy vs GMACs, accuracy vs throughput."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

# Figures are built with matplotlib's object API, never pyplot: no GUI backend, no global figure state.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from .results import SUMMARY_COLUMNS
from .spec import SpecError

if TYPE_CHECKING:
    from .steps import Roadmap

# The columns of results/<experiment>/roadmap.csv that the figures read.
PLOT_COLUMNS = (
    "roadmap", "step", "n_seeds", "status", "top1_mean", "top1_std", "params", "gmacs",
    "train_img_per_s", "eval_img_per_s", "bench_train_img_per_s", "bench_eval_img_per_s",
    "paper_top1", "paper_top1_std", "paper_gflops", "dataset", "preset",
)
FORMATS = ("png", "svg", "pdf")
MAC_CONVENTION = "GFLOPs = G multiply-accumulates, conv + linear"
# The paper's numbers share our axis only when our accuracies lie within this many points of theirs.
SHARED_SCALE_MARGIN = 5.0

STUDY_COLOR = "#3b6fb6"
EXPLORED_COLOR = "#9db7dd"
PAPER_COLOR = "#e07b39"
REFERENCE_COLOR = "#6b6b6b"
EMPTY_COLOR = "#9a9a9a"
BAND_COLOR = "#f2f2f2"


class SummaryError(SpecError):
    """A summary table the figures cannot read; the message names what is wrong."""


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class StudyLabel:
    """What the numbers are: data set, preset, seeds, and whether they are the paper's own."""

    dataset: str
    preset: str
    seeds: tuple[int, ...]  # distinct seed counts among the steps that have results
    from_paper: bool
    # "paper (Table 10)": the paper and the table the roadmap's numbers come from.
    paper_source: str
    # The paper's data set (the roadmap's), e.g. "ImageNet-1K".
    paper_dataset: str
    # Whether the paper gives a std per step (Table 10: over 3 seeds; Table 11: none).
    paper_has_std: bool

    @property
    def synthetic(self) -> bool:
        return _data_kind(self.dataset) == "synthetic"

    @property
    def seed_text(self) -> str:
        if self.from_paper:
            return "mean ± std over seeds, as published" if self.paper_has_std else "no std published"
        if not self.seeds:
            return "no finished runs"
        counts = "–".join(str(n) for n in sorted({min(self.seeds), max(self.seeds)}))
        plural = "" if self.seeds == (1,) else "s"
        return f"{counts} seed{plural} per step" + (" (mean ± std)" if max(self.seeds) > 1 else "")

    @property
    def caption(self) -> str:
        if self.from_paper:
            return f"Numbers: {self.paper_source}, {self.paper_dataset} · {self.seed_text} · {MAC_CONVENTION}"
        if self.synthetic:
            detail = "" if self.dataset.strip().lower() == "synthetic" else f" ({self.dataset})"
            dataset = f"SYNTHETIC data{detail}: random images, accuracies not comparable with {self.paper_dataset}"
        else:
            dataset = f"data: {self.dataset or 'unknown'}"
        return f"{dataset} · preset: {self.preset or 'unknown'} · {self.seed_text} · {MAC_CONVENTION}"


@dataclass(frozen=True)
class Reference:
    """The reference model of the roadmap (Swin-T for ConvNeXt-T), on the paper's scale."""

    name: str
    top1: float
    gflops: float

    @property
    def label(self) -> str:
        return f"{self.name} {self.top1:g}%"


@dataclass(frozen=True)
class ChartRow:
    """One step of the roadmap chart: the bar (ours or, for the paper figure, the paper's) and the paper marker."""

    step: str
    label: str
    group: str
    adopted: bool
    # "finished", "partial", "failed", "missing", or "paper" (the paper figure).
    status: str
    top1: float
    top1_std: float
    gmacs: float
    params: float
    paper_top1: float
    paper_top1_std: float
    paper_gflops: float
    # The step file has a note on the paper's numbers (e.g. Table 10's GFLOPs that are not conv + linear MACs).
    paper_note: str = ""
    # Mark the annotation with "*": the bar is the paper's and its step carries a note.
    footnoted: bool = False

    @property
    def hatched(self) -> bool:
        return not self.adopted

    @property
    def drawn(self) -> bool:
        """False for a slot drawn empty: the step failed or has no result."""
        return self.status not in ("failed", "missing") and math.isfinite(self.top1)

    @property
    def empty_text(self) -> str:
        return "failed" if self.status == "failed" else "missing"

    @property
    def annotation(self) -> str:
        mark = "*" if self.footnoted else ""
        parts = [f"{_format_gmacs(self.gmacs)}G{mark}"] if math.isfinite(self.gmacs) else []
        if math.isfinite(self.params):
            parts.append(_format_count(self.params))
        if self.status == "partial":
            parts.append("partial")
        return " · ".join(parts)


@dataclass(frozen=True)
class GroupSpan:
    """A design stage (Figure 2's section) and the rows it covers, first to last inclusive."""

    name: str
    first_row: int
    last_row: int


@dataclass(frozen=True)
class RoadmapChartData:
    """Everything the roadmap chart draws; rows in roadmap order, top to bottom."""

    title: str
    label: StudyLabel
    rows: tuple[ChartRow, ...]
    groups: tuple[GroupSpan, ...]
    reference: Reference | None
    # True: the paper gets its own panel beside ours; False: paper markers on our axis (or the bars are the paper's).
    paper_panel: bool
    xlim: tuple[float, float]
    paper_xlim: tuple[float, float]

    @property
    def paper_markers(self) -> bool:
        """Whether the paper's top-1 is drawn as a marker on each row of our axis."""
        return not self.label.from_paper and not self.paper_panel


@dataclass(frozen=True)
class Point:
    """One step in a scatter figure."""

    step: str
    label: str
    x: float
    y: float
    adopted: bool


@dataclass(frozen=True)
class Trajectory:
    """Steps as points; the adopted path joined in order, explored branches joined to their parent."""

    name: str
    points: tuple[Point, ...]
    adopted_path: tuple[tuple[str, str], ...]
    branches: tuple[tuple[str, str], ...]

    def point(self, step: str) -> Point:
        return next(point for point in self.points if point.step == step)


@dataclass(frozen=True)
class AccuracyVsGmacsData:
    """Everything the accuracy vs GMACs figure draws."""

    title: str
    label: StudyLabel
    study: Trajectory | None  # None for the paper figure
    paper: Trajectory
    reference: Reference | None
    paper_panel: bool


@dataclass(frozen=True)
class ThroughputPanel:
    """One panel of the throughput figure: training or inference img/s."""

    xlabel: str
    column: str  # the summary column the x values come from
    trajectory: Trajectory


@dataclass(frozen=True)
class AccuracyVsThroughputData:
    """Everything the accuracy vs throughput figure draws."""

    title: str
    label: StudyLabel
    panels: tuple[ThroughputPanel, ...]


# ------------------------------------------------------------------------------------- summary → data


def check_summary(summary: pd.DataFrame, source: str = "summary") -> None:
    """Raise SummaryError (one line) when the summary lacks a column the figures read."""
    missing = [column for column in PLOT_COLUMNS if column not in summary.columns]
    if missing:
        raise SummaryError(
            f"{source} lacks columns: {', '.join(missing)}; a roadmap summary has: {', '.join(SUMMARY_COLUMNS)}"
        )


def paper_summary(roadmap: Roadmap) -> pd.DataFrame:
    """A summary holding only the paper's numbers (status "paper"), from the roadmap's step files."""
    rows = []
    for step in roadmap.steps:
        row: dict[str, object] = {column: math.nan for column in SUMMARY_COLUMNS}
        row.update(
            roadmap=roadmap.name, order=step.order, step=step.name, group=step.group, adopted=step.adopted,
            parent=step.parent, n_seeds=0, seeds="", status="paper",
            paper_top1=step.paper.get("top1", math.nan), paper_top1_std=step.paper.get("top1_std", math.nan),
            paper_gflops=step.paper.get("gflops", math.nan), dataset=roadmap.dataset, preset="paper",
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def study_label(summary: pd.DataFrame, roadmap: Roadmap) -> StudyLabel:
    from_paper = bool(len(summary)) and bool((summary["status"] == "paper").all())
    with_results = summary[summary["status"].isin(["finished", "partial"]) & (summary["n_seeds"].fillna(0) > 0)]
    # The table is named in the roadmap's description, e.g. "... (Section 2, Figure 2, Table 10)".
    tables = re.findall(r"Table \d+", roadmap.description)
    return StudyLabel(
        dataset=_first_text(summary["dataset"]),
        preset=_first_text(summary["preset"]),
        seeds=tuple(sorted({int(n) for n in with_results["n_seeds"]})),
        from_paper=from_paper,
        paper_source=f"paper ({tables[-1]})" if tables else "paper",
        paper_dataset=roadmap.dataset or "the paper's data",
        paper_has_std=bool(summary["paper_top1_std"].notna().any()),
    )


def roadmap_chart_data(summary: pd.DataFrame, roadmap: Roadmap) -> RoadmapChartData:
    """The bars, error bars, paper markers, groups and reference line of the roadmap chart.

    Scales: when the study ran on real (not synthetic, not CIFAR) data and every accuracy lies within
    SHARED_SCALE_MARGIN points of the paper's, both share one axis: the paper is a marker on each row and
    "top-1 · GMACs · params" a column right of the axes. Otherwise the paper's bars get their own panel
    beside ours, each panel with its own x-scale, so that neither squashes the other. For a summary
    from paper_summary() the bars are the paper's.
    """
    by_step = _rows_by_step(summary, roadmap)
    label = study_label(summary, roadmap)
    rows = []
    for step in roadmap.steps:
        record = by_step.get(step.name, {})
        paper = (_number(record, "paper_top1"), _number(record, "paper_top1_std"), _number(record, "paper_gflops"))
        if label.from_paper:
            ours = (paper[0], paper[1], paper[2], math.nan)
        else:
            ours = tuple(_number(record, key) for key in ("top1_mean", "top1_std", "gmacs", "params"))
        rows.append(ChartRow(
            step=step.name, label=step.name.replace("_", " "), group=step.group, adopted=step.adopted,
            status=str(record.get("status", "missing")), top1=ours[0], top1_std=ours[1], gmacs=ours[2],
            params=ours[3], paper_top1=paper[0], paper_top1_std=paper[1], paper_gflops=paper[2],
            paper_note=str(step.paper.get("note", "")), footnoted=label.from_paper and "note" in step.paper,
        ))
    reference = _reference(roadmap)
    study_values = [(r.top1, r.top1_std) for r in rows if r.drawn]
    paper_values = [(r.paper_top1, r.paper_top1_std) for r in rows if math.isfinite(r.paper_top1)]
    paper_panel = not label.from_paper and not _shares_paper_scale(label, study_values, paper_values)
    reference_values = [(reference.top1, math.nan)] if reference else []
    if label.from_paper or paper_panel:
        xlim = _bar_limits(study_values + (reference_values if label.from_paper else []))
    else:  # annotations go in a column right of the axes: little room needed
        xlim = _bar_limits(study_values + paper_values + reference_values, annotation_room=0.04)
    return RoadmapChartData(
        title=f"{roadmap.title}: the modernization roadmap" + (" (paper)" if label.from_paper else ""),
        label=label, rows=tuple(rows), groups=_group_spans(rows), reference=reference,
        paper_panel=paper_panel, xlim=xlim, paper_xlim=_bar_limits(paper_values + reference_values),
    )


def accuracy_vs_gmacs_data(summary: pd.DataFrame, roadmap: Roadmap) -> AccuracyVsGmacsData | None:
    """Each step at (GMACs, top-1): ours (from the runs) and the paper's; None when neither has a point."""
    by_step = _rows_by_step(summary, roadmap)
    label = study_label(summary, roadmap)
    paper = _trajectory(label.paper_source, roadmap, by_step, "paper_gflops", "paper_top1", from_runs=False)
    study = None if label.from_paper else _trajectory("this study", roadmap, by_step, "gmacs", "top1_mean")
    if not paper.points and (study is None or not study.points):
        return None
    paper_panel = study is not None and bool(paper.points) and not _shares_paper_scale(
        label, [(p.y, math.nan) for p in study.points], [(p.y, math.nan) for p in paper.points]
    )
    return AccuracyVsGmacsData(
        title=f"{roadmap.title}: top-1 accuracy vs GMACs", label=label, study=study, paper=paper,
        reference=_reference(roadmap), paper_panel=paper_panel,
    )


def accuracy_vs_throughput_data(summary: pd.DataFrame, roadmap: Roadmap) -> AccuracyVsThroughputData | None:
    """Top-1 vs measured throughput, one panel per kind (training, inference); None when no step has one.

    A panel's x values come from the benchmark columns (bench_*) when any step has one, else from the
    training run's own figures: one source per panel, never a mix.
    """
    by_step = _rows_by_step(summary, roadmap)
    panels = []
    for kind, bench_column, run_column in (
        ("training", "bench_train_img_per_s", "train_img_per_s"),
        ("inference", "bench_eval_img_per_s", "eval_img_per_s"),
    ):
        for column, source in ((bench_column, "benchmark"), (run_column, "measured during training")):
            if summary[column].notna().any():
                trajectory = _trajectory("this study", roadmap, by_step, column, "top1_mean")
                if trajectory.points:
                    xlabel = f"{kind} throughput (img/s, {source}; right is faster)"
                    panels.append(ThroughputPanel(xlabel=xlabel, column=column, trajectory=trajectory))
                    break
    if not panels:
        return None
    title = f"{roadmap.title}: top-1 accuracy vs measured throughput"
    return AccuracyVsThroughputData(title=title, label=study_label(summary, roadmap), panels=tuple(panels))


def _rows_by_step(summary: pd.DataFrame, roadmap: Roadmap) -> dict[str, dict[str, object]]:
    check_summary(summary)
    other_roadmaps = sorted({str(name) for name in summary["roadmap"].dropna() if str(name)} - {roadmap.name})
    if other_roadmaps:
        raise SummaryError(f"summary holds roadmap {other_roadmaps[0]!r}, not {roadmap.name!r}; "
                           f"pass --roadmap {other_roadmaps[0]} or a summary of {roadmap.name!r}")
    names = set(roadmap.names())
    unknown = [str(step) for step in summary["step"] if step not in names]
    if unknown:
        raise SummaryError(
            f"summary has steps not in roadmap {roadmap.name!r}: {', '.join(unknown)}; "
            f"valid steps: {', '.join(roadmap.names())}"
        )
    return {str(record["step"]): record for record in summary.to_dict("records")}


def _trajectory(name: str, roadmap: Roadmap, by_step: dict, x_column: str, y_column: str,
                from_runs: bool = True) -> Trajectory:
    """The steps with both numbers; with from_runs, a failed step is left out whatever it recorded."""
    points = []
    for step in roadmap.steps:
        record = by_step.get(step.name, {})
        x, y = _number(record, x_column), _number(record, y_column)
        failed = from_runs and record.get("status") == "failed"
        if not failed and math.isfinite(x) and math.isfinite(y):
            points.append(Point(step=step.name, label=step.name.replace("_", " "), x=x, y=y, adopted=step.adopted))
    present = {point.step for point in points}
    adopted = [step.name for step in roadmap.steps if step.adopted and step.name in present]
    branches = tuple(
        (step.parent, step.name)
        for step in roadmap.steps
        if not step.adopted and step.name in present and step.parent in present
    )
    return Trajectory(name=name, points=tuple(points), adopted_path=tuple(zip(adopted, adopted[1:])), branches=branches)


def _reference(roadmap: Roadmap) -> Reference | None:
    ref = roadmap.reference
    if "top1" not in ref:
        return None
    return Reference(name=str(ref.get("name", "reference")), top1=float(ref["top1"]),
                     gflops=float(ref.get("gflops", math.nan)))


def _group_spans(rows: Sequence[ChartRow]) -> tuple[GroupSpan, ...]:
    spans: list[GroupSpan] = []
    for index, row in enumerate(rows):
        if spans and spans[-1].name == row.group:
            spans[-1] = GroupSpan(row.group, spans[-1].first_row, index)
        else:
            spans.append(GroupSpan(row.group, index, index))
    return tuple(spans)


def _data_kind(dataset: str) -> str:
    return dataset.split(":", 1)[0].strip().lower()


def _shares_paper_scale(label: StudyLabel, ours: list[tuple[float, float]], paper: list[tuple[float, float]]) -> bool:
    """Our numbers and the paper's on one axis only if the data are ImageNet-like and the accuracies are close."""
    if label.synthetic or _data_kind(label.dataset).startswith("cifar") or not ours or not paper:
        return False
    low, high = min(v for v, _ in paper) - SHARED_SCALE_MARGIN, max(v for v, _ in paper) + SHARED_SCALE_MARGIN
    return all(low <= value <= high for value, _ in ours)


def _bar_limits(values: Iterable[tuple[float, float]], annotation_room: float = 0.3) -> tuple[float, float]:
    """x-limits for bars that start at the left edge, with room on the right for the annotations.

    As in the paper's Figure 2 the left edge is not 0 but sits a quarter of the values' spread below the
    lowest, so that differences of a few tenths of a point stay visible at any accuracy scale.
    """
    spans = [(v - (s if math.isfinite(s) else 0), v + (s if math.isfinite(s) else 0)) for v, s in values]
    if not spans:
        return (0.0, 100.0)
    low, high = min(lo for lo, _ in spans), max(hi for _, hi in spans)
    width = max(high - low, 1.0)
    left = max(0.0, math.floor(low - 0.25 * width))
    return (float(left), high + annotation_room * (high - left))


def _number(record: dict, key: str) -> float:
    value = record.get(key, math.nan)
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _first_text(column: pd.Series) -> str:
    values = [str(v) for v in column.dropna().unique() if str(v)]
    return ", ".join(values)


def _format_gmacs(value: float) -> str:
    """Two decimals as Table 10 prints them; small synthetic-scale models keep three significant digits."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _format_count(count: float) -> str:
    return f"{count / 1e6:.3g}M" if count >= 1e6 else f"{count / 1e3:.3g}k"


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
        main.set_xlabel(f"top-1 accuracy (%), this study · {data.label.dataset or 'unknown data'}")
    if data.paper_markers:
        _draw_paper_markers(main, rows)
        _draw_reference(main, data.reference)
    if data.paper_panel:
        paper_axis = axes[2]
        paper_rows = [_as_paper_row(row) for row in rows]
        _draw_bars(paper_axis, paper_rows, data.groups, data.paper_xlim, annotate_in_column=False)
        paper_axis.set_xlim(*data.paper_xlim)
        paper_axis.tick_params(axis="y", left=False, labelleft=False)
        paper_axis.set_xlabel(f"{data.label.paper_dataset} top-1 accuracy (%), {data.label.paper_source}")
        paper_axis.set_title(f"{data.label.paper_source}, {data.label.paper_dataset}, for comparison", fontsize=9)
        main.set_title("this study", fontsize=9)
        _draw_reference(paper_axis, data.reference)

    main.tick_params(axis="y", labelsize=9)
    fig.suptitle(data.title, fontweight="bold")
    caption = data.label.caption
    if any(row.paper_note for row in rows) and (data.label.from_paper or data.paper_panel):
        caption += "\n* GFLOPs as published; the step's conv + linear MACs differ (see the note in its step file)"
    _caption_legend(fig, caption, _roadmap_legend(data))
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


def _as_paper_row(row: ChartRow) -> ChartRow:
    """The paper's numbers in a row's bar slot, for the paper panel."""
    status = "paper" if math.isfinite(row.paper_top1) else "missing"
    return ChartRow(
        step=row.step, label=row.label, group=row.group, adopted=row.adopted, status=status,
        top1=row.paper_top1, top1_std=row.paper_top1_std, gmacs=row.paper_gflops, params=math.nan,
        paper_top1=row.paper_top1, paper_top1_std=row.paper_top1_std, paper_gflops=row.paper_gflops,
        paper_note=row.paper_note, footnoted=bool(row.paper_note),
    )


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
    if any(not row.drawn for row in data.rows):
        handles.append(Patch(facecolor="none", edgecolor=EMPTY_COLOR, linestyle="--", label="no result"))
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
        study_axis.set_title(f"this study · {data.label.dataset}", fontsize=9)
        paper_axis.set_title(f"{data.label.paper_source}, {data.label.paper_dataset}", fontsize=9)
    fig.suptitle(data.title, fontweight="bold")
    _caption_legend(fig, data.label.caption)
    if data.paper_panel:
        _label_points(fig, [(study_axis, [data.study]), (paper_axis, [data.paper])])
    else:
        _label_points(fig, [(study_axis, [t for t in (data.study, data.paper) if t is not None and t.points])])
    return fig


def draw_accuracy_vs_throughput(data: AccuracyVsThroughputData) -> Figure:
    """Top-1 against measured throughput (the cost the paper never reported per step)."""
    n_panels = len(data.panels)
    fig = Figure(figsize=(7.0 * n_panels, 5.5), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)
    for ax, panel in zip(axes[0], data.panels):
        _draw_trajectory(ax, panel.trajectory, STUDY_COLOR)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(color="#e5e5e5", lw=0.6)
    fig.suptitle(data.title, fontweight="bold")
    _caption_legend(fig, data.label.caption)
    _label_points(fig, [(ax, [panel.trajectory]) for ax, panel in zip(axes[0], data.panels)])
    return fig


def _draw_trajectory(ax, trajectory: Trajectory, color: str) -> None:
    adopted = [p for p in trajectory.points if p.adopted]
    explored = [p for p in trajectory.points if not p.adopted]
    ax.plot([p.x for p in adopted], [p.y for p in adopted], marker="o", markersize=6, color=color, linestyle="none",
            label=f"{trajectory.name}: adopted")
    ax.plot([p.x for p in explored], [p.y for p in explored], marker="o", markersize=6, markerfacecolor="white",
            markeredgecolor=color, markeredgewidth=1.4, linestyle="none", label=f"{trajectory.name}: explored")
    for edges, style in ((trajectory.adopted_path, "-"), (trajectory.branches, "--")):
        for start, end in edges:
            a, b = trajectory.point(start), trajectory.point(end)
            ax.annotate("", xy=(b.x, b.y), xytext=(a.x, a.y), arrowprops={
                "arrowstyle": "-|>", "color": color, "lw": 1.1, "linestyle": style, "shrinkA": 4, "shrinkB": 4,
                "mutation_scale": 10})
    ax.margins(x=0.12, y=0.08)


# Where a point's name may go, in points from the point: (dx, dy, horizontal, vertical alignment).
LABEL_SPOTS = (
    (6, 0, "left", "center"), (-6, 0, "right", "center"), (0, 6, "center", "bottom"), (0, -6, "center", "top"),
    (5, 5, "left", "bottom"), (-5, 5, "right", "bottom"), (5, -5, "left", "top"), (-5, -5, "right", "top"),
    (12, 10, "left", "bottom"), (-12, 10, "right", "bottom"), (12, -10, "left", "top"), (-12, -10, "right", "top"),
    (22, 18, "left", "bottom"), (-22, 18, "right", "bottom"), (22, -18, "left", "top"), (-22, -18, "right", "top"),
)
# Names placed this far (points) from their point get a thin leader line to it.
LEADER_DISTANCE = 10


def _label_points(fig: Figure, panels: Sequence[tuple[object, Sequence[Trajectory]]]) -> None:
    """Name every point, each name at the spot that overlaps the fewest names, markers and arrows so far.

    `panels` pairs each axes with the trajectories drawn on it. Run after everything else is drawn: it
    lays the figure out once to know where the points land.
    """
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()  # settles the layout, hence the data -> pixel transform
    pixels_per_point = fig.dpi / 72
    for ax, trajectories in panels:
        to_pixels = ax.transData.transform
        radius = 6 * pixels_per_point  # a marker and a margin around it
        obstacles: list[tuple[float, float, float, float]] = []  # (x0, y0, x1, y1) in pixels
        markers: list[tuple[float, float, float, float]] = []
        for trajectory in trajectories:
            for point in trajectory.points:
                x, y = to_pixels((point.x, point.y))
                markers.append((x - radius, y - radius, x + radius, y + radius))
        obstacles.extend(markers)
        for trajectory in trajectories:
            for start, end in trajectory.adopted_path + trajectory.branches:
                (x0, y0), (x1, y1) = to_pixels([(trajectory.point(start).x, trajectory.point(start).y),
                                                (trajectory.point(end).x, trajectory.point(end).y)])
                for t in (i / 12 for i in range(1, 12)):
                    x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                    obstacles.append((x - 1.5, y - 1.5, x + 1.5, y + 1.5))
        frame = tuple(ax.get_window_extent(renderer).extents)
        for trajectory in trajectories:
            for point in trajectory.points:
                probe = ax.annotate(point.label, (point.x, point.y), fontsize=7)
                extent = probe.get_window_extent(renderer)
                probe.remove()
                anchor = to_pixels((point.x, point.y))
                best_cost, best_spot, best_box = math.inf, LABEL_SPOTS[0], frame
                for spot in LABEL_SPOTS:
                    box = _label_box(anchor, spot, extent.width, extent.height, pixels_per_point)
                    area = (box[2] - box[0]) * (box[3] - box[1])
                    cost = sum(_overlap(box, other) for other in obstacles) + 10 * (area - _overlap(box, frame))
                    cost += area * _leader_crossings(anchor, spot, pixels_per_point, markers)
                    if cost < best_cost - 1e-9:
                        best_cost, best_spot, best_box = cost, spot, box
                dx, dy, horizontal, vertical = best_spot
                leader = {"arrowstyle": "-", "color": "#999999", "lw": 0.5, "shrinkA": 1, "shrinkB": 3}
                ax.annotate(point.label, (point.x, point.y), xytext=(dx, dy), textcoords="offset points",
                            ha=horizontal, va=vertical, fontsize=7, color="#333333", zorder=5,
                            arrowprops=leader if max(abs(dx), abs(dy)) >= LEADER_DISTANCE else None)
                obstacles.append(best_box)


def _leader_crossings(anchor, spot, pixels_per_point: float, markers: Sequence[tuple[float, ...]]) -> int:
    """How many other points a leader line from `anchor` to a label at `spot` would pass over."""
    dx, dy = spot[0] * pixels_per_point, spot[1] * pixels_per_point
    if max(abs(spot[0]), abs(spot[1])) < LEADER_DISTANCE:
        return 0
    samples = [(anchor[0] + t * dx, anchor[1] + t * dy) for t in (0.4, 0.55, 0.7, 0.85, 1.0)]
    return sum(
        any(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in samples)
        for box in markers
        if not box[0] <= anchor[0] <= box[2] or not box[1] <= anchor[1] <= box[3]  # not the point's own marker
    )


def _label_box(anchor, spot, width: float, height: float, pixels_per_point: float) -> tuple[float, ...]:
    """The pixel box of a label of the given size placed at `spot` from `anchor`."""
    dx, dy, horizontal, vertical = spot
    x = anchor[0] + dx * pixels_per_point - {"left": 0.0, "center": width / 2, "right": width}[horizontal]
    y = anchor[1] + dy * pixels_per_point - {"bottom": 0.0, "center": height / 2, "top": height}[vertical]
    return (x, y, x + width, y + height)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The area two (x0, y0, x1, y1) boxes share."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _caption_legend(fig: Figure, caption: str, handles: list | None = None) -> None:
    """One legend below the panels, titled with the caption (data set, preset, seeds, MAC convention)."""
    if handles is None:  # every labelled marker set of every panel, once
        lines = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]
        handles = list({line.get_label(): line for line in lines if not line.get_label().startswith("_")}.values())
    legend = fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5) or 1, fontsize=8,
                        frameon=False, title=caption, title_fontsize=8)
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
