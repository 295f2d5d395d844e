"""What each figure draws, as frozen dataclasses: the roadmap chart's rows, the scatter figures' points."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAC_CONVENTION = "GMACs = G multiply-accumulates of conv + linear layers (the paper's \"GFLOPs\" count the same)"
# Marks of a Δ whose 95 % interval excludes zero: filled when the interval is over seeds (Welch), hollow when it is
# over one seed's validation images (McNemar / paired bootstrap: evaluation noise only).
SIGNIFICANT_UP, SIGNIFICANT_DOWN = "▲", "▼"
EVALUATION_UP, EVALUATION_DOWN = "△", "▽"
SIGNIFICANCE_MARKS = {"welch": (SIGNIFICANT_UP, SIGNIFICANT_DOWN), "mcnemar": (EVALUATION_UP, EVALUATION_DOWN)}
# What each kind of mark means, for legends and the terminal.
SIGNIFICANCE_MEANINGS = {
    "welch": "95 % interval over seeds excludes 0 (Welch's t-test: seed-to-seed noise)",
    "mcnemar": "one seed: 95 % interval over its validation images excludes 0 (McNemar / paired bootstrap: "
               "evaluation noise only, seed-to-seed noise unmeasured)",
}
# Why a roadmap chart's slot is empty, by the row's status.
EMPTY_TEXTS = {"failed": "failed", "missing": "not run yet", "paper": "not in this study"}


def significance_mark(test: str, delta: float) -> str:
    """▲/▼ (over seeds) or △/▽ (one seed's images) by the sign of `delta`; "" for an unknown test."""
    up, down = SIGNIFICANCE_MARKS.get(test, ("", ""))
    return up if delta > 0 else down


def describe_data(description: str, data_kind: str = "") -> str:
    """A run's data description as the figures and the terminal print it: what each count counts.

    Runs record "synthetic (10 classes, 2304/2500 images, 32 px)"; this gives "synthetic: 10 classes, 2,304 train /
    2,500 val images, 32 px". Descriptions of any version are read back, hence the rewriting here.
    """
    def counts(match: re.Match) -> str:
        return f"{int(match[1]):,} train / {int(match[2]):,} val images"

    text = re.sub(r"(\d+)/(\d+) images", counts, description.strip())
    source, bracket, rest = text.partition(" (")
    return f"{source}: {rest[:-1]}" if bracket and rest.endswith(")") else text


@dataclass(frozen=True)
class StudyLabel:
    """What the numbers are: data set, preset, seeds, and whether they are the paper's own."""

    dataset: str
    # The data kind the runs recorded: synthetic, imagefolder, cifar10, cifar100 ("" when unknown).
    data_kind: str
    preset: str
    seeds: tuple[int, ...]  # distinct seed counts among the steps that have results
    from_paper: bool
    # "paper (Table 10)": the paper and the table the roadmap's numbers come from.
    paper_source: str
    # The paper's data set (the roadmap's), e.g. "ImageNet-1K".
    paper_dataset: str
    # Whether the paper gives a std per step (Table 10: over 3 seeds; Table 11: none).
    paper_has_std: bool
    # Which epoch's top-1 the numbers are: "last" or "best".
    report: str = "last"

    @property
    def synthetic(self) -> bool:
        return self.data_kind == "synthetic"

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
    def data_text(self) -> str:
        """"SYNTHETIC data (10 classes, 2,304 train / 2,500 val images, 32 px): ..." or "data: imagefolder ..."."""
        if self.synthetic:
            detail = describe_data(self.dataset).removeprefix("synthetic").lstrip(": ")
            return (f"SYNTHETIC data{f' ({detail})' if detail else ''}: random images, accuracies not comparable "
                    f"with {self.paper_dataset}")
        return f"data: {describe_data(self.dataset) or 'unknown'}"

    @property
    def description(self) -> str:
        """What the numbers are, without a counting convention (data, preset, epoch, seeds)."""
        if self.from_paper:
            return f"Numbers: {self.paper_source}, {self.paper_dataset} · {self.seed_text}"
        return f"{self.data_text} · preset: {self.preset or 'unknown'} · top-1 of the {self.report} epoch · " \
               f"{self.seed_text}"

    @property
    def caption(self) -> str:
        """The description and the MAC convention: the caption of the figures that print GMACs."""
        return f"{self.description} · {MAC_CONVENTION}"


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
    # Δ top-1 to the parent (points), and whether its 95 % interval excludes 0 (by `delta_test`).
    delta: float = math.nan
    delta_significant: bool = False
    delta_test: str = ""

    @property
    def hatched(self) -> bool:
        return not self.adopted

    @property
    def drawn(self) -> bool:
        """False for a slot drawn empty: the step failed, has no result yet, or lies beyond the study (--upto)."""
        return self.status not in ("failed", "missing") and math.isfinite(self.top1)

    @property
    def empty_text(self) -> str:
        return EMPTY_TEXTS.get(self.status, "no result")

    @property
    def annotation(self) -> str:
        mark = "*" if self.footnoted else ""
        parts = [f"{_format_gmacs(self.gmacs)}G{mark}"] if math.isfinite(self.gmacs) else []
        if math.isfinite(self.params):
            parts.append(_format_count(self.params))
        if self.status == "partial":
            parts.append("partial")
        if self.delta_significant:
            parts.append(f"Δ{self.delta:+.2f}{significance_mark(self.delta_test, self.delta)}")
        return " · ".join(parts)

    def as_paper_row(self) -> ChartRow:
        """The paper's numbers in this row's bar slot, for the paper panel."""
        status = "paper" if math.isfinite(self.paper_top1) else "missing"
        return ChartRow(
            step=self.step, label=self.label, group=self.group, adopted=self.adopted, status=status,
            top1=self.paper_top1, top1_std=self.paper_top1_std, gmacs=self.paper_gflops, params=math.nan,
            paper_top1=self.paper_top1, paper_top1_std=self.paper_top1_std, paper_gflops=self.paper_gflops,
            paper_note=self.paper_note, footnoted=bool(self.paper_note),
        )


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
    # The 95 % interval of y, drawn as an error bar (NaN: none).
    y_low: float = math.nan
    y_high: float = math.nan
    # The range of x's repeated measurements (throughput), drawn as a horizontal bar (NaN: none).
    x_low: float = math.nan
    x_high: float = math.nan
    # x has a repeat far from the others (a disturbed measurement): ringed in the figure.
    flagged: bool = False


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
    # Where and how it was measured ("cpu x1 · batch 64 · fp32"), and what a point and its bar are.
    setting: str = ""
    repeats: str = ""


@dataclass(frozen=True)
class AccuracyVsThroughputData:
    """Everything the accuracy vs throughput figure draws."""

    title: str
    label: StudyLabel
    panels: tuple[ThroughputPanel, ...]



def _format_gmacs(value: float) -> str:
    """Two decimals as Table 10 prints them; small synthetic-scale models keep three significant digits."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _format_count(count: float) -> str:
    return f"{count / 1e6:.3g}M" if count >= 1e6 else f"{count / 1e3:.3g}k"
