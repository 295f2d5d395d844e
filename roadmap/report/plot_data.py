"""The numbers each figure draws (roadmap.report.figure_data), from a results summary or the paper's numbers."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import SpecError
from ..schema import Status
from .figure_data import (
    MAC_CONVENTION,
    SIGNIFICANCE_MARKS,
    SIGNIFICANCE_MEANINGS,
    AccuracyVsGmacsData,
    AccuracyVsThroughputData,
    ChartRow,
    GroupSpan,
    Point,
    Reference,
    RoadmapChartData,
    StudyLabel,
    ThroughputPanel,
    Trajectory,
)
from .repeats import FAR_SPREAD_PCT
from .results import SUMMARY_COLUMNS

if TYPE_CHECKING:
    from ..variants import RoadmapInfo

# The columns of results/<experiment>/roadmap.csv that the figures read.
PLOT_COLUMNS = (
    "roadmap", "ablation", "order", "variant", "label", "group", "adopted", "baseline", "note", "n_seeds", "status",
    "report", "top1_mean", "top1_std", "top1_ci_low", "top1_ci_high",
    "delta_top1", "delta_ci_low", "delta_ci_high", "delta_test", "params", "gmacs",
    "train_img_per_s", "eval_img_per_s", "bench_train_img_per_s", "bench_eval_img_per_s",
    "paper_top1", "paper_top1_std", "paper_gflops", "dataset", "data_kind", "preset",
)
# What the chart's significance marks and the scatter's error bars mean, per test.
TEST_LABELS = {"welch": "Welch's t-test over seeds", "mcnemar": "McNemar / paired bootstrap over one seed's images"}
# The paper's numbers share our axis only when our accuracies lie within this many points of theirs.
SHARED_SCALE_MARGIN = 5.0


class SummaryError(SpecError):
    """A summary table the figures cannot read; the message names what is wrong."""


# ------------------------------------------------------------------------------------- summary → data


def check_summary(summary: pd.DataFrame, source: str = "summary") -> None:
    """Raise SummaryError (one line) when the summary lacks a column the figures read."""
    missing = [column for column in PLOT_COLUMNS if column not in summary.columns]
    if missing:
        raise SummaryError(
            f"{source} lacks columns: {', '.join(missing)}; a roadmap summary has: {', '.join(SUMMARY_COLUMNS)}"
        )


def paper_summary(roadmap: RoadmapInfo) -> pd.DataFrame:
    """A cumulative summary holding only the paper's numbers (status "paper"), of every step of the roadmap."""
    rows = []
    for step in roadmap.steps:
        row: dict[str, object] = {column: math.nan for column in SUMMARY_COLUMNS}
        row.update(
            roadmap=roadmap.name, ablation="cumulative", order=step.order, variant=step.name,
            label=step.name.replace("_", " "), step=step.name, group=step.group, adopted=step.adopted,
            baseline=step.parent or "", config_hash="", note="", n_seeds=0, seeds="", status="paper",
            paper_step=step.name, paper_note=step.paper.get("note", ""), paper_top1=step.paper.get("top1", math.nan),
            paper_top1_std=step.paper.get("top1_std", math.nan), paper_gflops=step.paper.get("gflops", math.nan),
            dataset=roadmap.dataset, data_kind="", preset="paper", report="", delta_test="", delta_basis="",
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def study_label(summary: pd.DataFrame, roadmap: RoadmapInfo) -> StudyLabel:
    from_paper = bool(len(summary)) and bool((summary["status"] == Status.PAPER).all())
    with_results = summary[summary["status"].isin([Status.FINISHED, Status.PARTIAL])
                           & (summary["n_seeds"].fillna(0) > 0)]
    return StudyLabel(
        dataset=_first_text(summary["dataset"]),
        data_kind=_first_text(summary["data_kind"]),
        preset=_first_text(summary["preset"]),
        seeds=tuple(sorted({int(n) for n in with_results["n_seeds"]})),
        from_paper=from_paper,
        paper_source=roadmap.paper_source,
        paper_dataset=roadmap.dataset or "the paper's data",
        paper_has_std=bool(summary["paper_top1_std"].notna().any()),
        report=_first_text(summary["report"]) or "last",
    )


def roadmap_chart_data(summary: pd.DataFrame, roadmap: RoadmapInfo) -> RoadmapChartData:
    """The bars, error bars, paper markers, groups and reference line of the roadmap chart.

    Scales: when the study ran on real (not synthetic, not CIFAR) data and every accuracy lies within
    SHARED_SCALE_MARGIN points of the paper's, both share one axis: the paper is a marker on each row and
    "top-1 · GMACs · params" a column right of the axes. Otherwise the paper's bars get their own panel
    beside ours, each panel with its own x-scale, so that neither squashes the other. For a summary
    from paper_summary() the bars are the paper's.
    """
    records = _records(summary, roadmap, with_rest=True)
    label = study_label(summary, roadmap)
    rows = []
    for record in records:
        paper = (_number(record, "paper_top1"), _number(record, "paper_top1_std"), _number(record, "paper_gflops"))
        if label.from_paper:
            ours = (paper[0], paper[1], paper[2], math.nan)
        else:
            ours = tuple(_number(record, key) for key in ("top1_mean", "top1_std", "gmacs", "params"))
        note = str(record.get("paper_note", "") or "")
        rows.append(ChartRow(
            step=str(record["variant"]), label=str(record["label"]), group=str(record["group"]),
            adopted=bool(record["adopted"]), status=str(record.get("status", "missing")), top1=ours[0],
            top1_std=ours[1], gmacs=ours[2], params=ours[3], paper_top1=paper[0], paper_top1_std=paper[1],
            paper_gflops=paper[2], paper_note=note, footnoted=label.from_paper and bool(note),
            **({} if label.from_paper else _delta_fields(record)),
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


def accuracy_vs_gmacs_data(summary: pd.DataFrame, roadmap: RoadmapInfo) -> AccuracyVsGmacsData | None:
    """Each variant at (GMACs, top-1): ours (from the runs) and the paper's, the paper's for the whole roadmap
    (steps beyond --upto too); None when neither has a point."""
    records = _records(summary, roadmap, with_rest=True)
    label = study_label(summary, roadmap)
    paper = _trajectory(label.paper_source, records, "paper_gflops", "paper_top1", from_runs=False)
    study = None if label.from_paper else _trajectory("this study", records, "gmacs", "top1_mean", intervals=True)
    if not paper.points and (study is None or not study.points):
        return None
    paper_panel = study is not None and bool(paper.points) and not _shares_paper_scale(
        label, [(p.y, math.nan) for p in study.points], [(p.y, math.nan) for p in paper.points]
    )
    return AccuracyVsGmacsData(
        title=f"{roadmap.title}: top-1 accuracy vs GMACs", label=label, study=study, paper=paper,
        reference=_reference(roadmap), paper_panel=paper_panel,
    )


def accuracy_vs_throughput_data(summary: pd.DataFrame, roadmap: RoadmapInfo) -> AccuracyVsThroughputData | None:
    """Top-1 vs measured throughput, one panel per kind (training, inference); None when no step has one.

    A panel's x values come from --benchmark (bench_*) when any step has one, else from the training runs: one
    source per panel, never a mix. Each point is the median of its repeats (--benchmark's timed repeats; a
    training run's epochs, times its seeds; one evaluation per seed) with their range as a bar, ringed when a
    repeat lies far from the others (roadmap.report.repeats). A table without repeats (a CSV of an earlier
    version) gives the mean over seeds, without bars.
    """
    records = _records(summary, roadmap)
    panels = []
    for kind, short in (("training", "train"), ("inference", "eval")):
        bench, runs = f"bench_{short}_img_per_s", f"{short}_img_per_s"
        if summary[bench].notna().any():
            column, source = bench, "--benchmark"
            setting = _joined(summary.get("bench_setting"))
            repeats = "median of --benchmark's timed repeats; bar: their spread (max − min), centred on it"
        elif f"{runs}_median" in summary and summary[f"{runs}_median"].notna().any():
            column, source = f"{runs}_median", "during training"
            setting = _joined(summary.get(f"{short}_setting"))
            single = (summary[f"{runs}_repeats"].fillna(0) <= 1).all()
            repeats = ("one measurement per variant (one seed, one evaluation): its noise is unmeasured; "
                       "run_ablation.py --benchmark times repeats" if single else
                       "median of every epoch of every seed; bar: slowest to fastest" if short == "train" else
                       "median of the seeds' last evaluations; bar: slowest to fastest")
        elif summary[runs].notna().any():
            column, source, setting, repeats = runs, "during training", "", "mean over seeds (repeats not recorded)"
        else:
            continue
        trajectory = _trajectory("this study", [_with_spread(record, column, short) for record in records],
                                 column, "top1_mean")
        if trajectory.points:
            xlabel = f"{kind} throughput (img/s, {source}; right is faster)"
            panels.append(ThroughputPanel(xlabel=xlabel, column=column, trajectory=trajectory, setting=setting,
                                          repeats=repeats))
    if not panels:
        return None
    title = f"{roadmap.title}: top-1 accuracy vs measured throughput"
    return AccuracyVsThroughputData(title=title, label=study_label(summary, roadmap), panels=tuple(panels))


def _with_spread(record: dict[str, object], column: str, short: str) -> dict[str, object]:
    """The record with the range of its x repeats (_x_low, _x_high) and whether one is far from the rest (_far)."""
    if column.startswith("bench_"):
        value, spread = _number(record, column), _number(record, f"bench_{short}_spread_pct")
        half = value * spread / 200 if math.isfinite(spread) else math.nan
        return {**record, "_x_low": value - half, "_x_high": value + half, "_far": spread > FAR_SPREAD_PCT}
    if column.endswith("_median"):
        return {**record, "_x_low": _number(record, f"{short}_img_per_s_low"),
                "_x_high": _number(record, f"{short}_img_per_s_high"),
                "_far": _number(record, f"{short}_img_per_s_far") > 0}
    return record


def _joined(column: pd.Series | None) -> str:
    if column is None:
        return ""
    return "; ".join(sorted({str(value) for value in column.dropna() if str(value)}))


def rest_of_roadmap(summary: pd.DataFrame, roadmap: RoadmapInfo) -> pd.DataFrame:
    """Rows (status "paper") for the roadmap's steps after the last one a cumulative study covers: the paper's
    numbers of the steps beyond its --upto, which the figures draw as "not in this study".

    The steps come from the plan's RoadmapInfo (every step of the roadmap with the paper's numbers); the rows are
    left out (an empty frame) for leave-one-out, for a summary of the paper itself, and when the roadmap's steps
    do not begin with the summary's variants.
    """
    empty = summary.iloc[0:0]
    ablations = {str(value) for value in summary["ablation"].dropna() if str(value)}
    if summary.empty or (summary["status"] == Status.PAPER).all() or ablations - {"cumulative"}:
        return empty
    ours = [str(name) for name in summary.sort_values("order", kind="stable")["variant"]]
    if roadmap.names()[:len(ours)] != ours:
        return empty
    rest = paper_summary(roadmap).iloc[len(ours):].copy()
    rest[["dataset", "preset", "report"]] = ""  # the study's label says what the data are; these rows have none
    return rest


def _records(summary: pd.DataFrame, roadmap: RoadmapInfo, with_rest: bool = False) -> list[dict[str, object]]:
    """The summary's rows in plan order, after checking it is a summary of `roadmap`; `with_rest`: followed by the
    steps beyond the study (rest_of_roadmap)."""
    check_summary(summary)
    if with_rest:
        rest = rest_of_roadmap(summary, roadmap)
        summary = pd.concat([summary, rest[list(summary.columns.intersection(rest.columns))]], ignore_index=True) \
            if len(rest) else summary
    other_roadmaps = sorted({str(name) for name in summary["roadmap"].dropna() if str(name)} - {roadmap.name})
    if other_roadmaps:
        raise SummaryError(f"summary holds roadmap {other_roadmaps[0]!r}, not {roadmap.name!r}; "
                           f"pass --roadmap {other_roadmaps[0]} or a summary of {roadmap.name!r}")
    records = summary.sort_values("order", kind="stable").to_dict("records")
    names = [str(record["variant"]) for record in records]
    for record in records:
        baseline = str(record["baseline"] or "")
        if baseline and baseline not in names:
            raise SummaryError(f"variant {record['variant']} is compared with {baseline!r}, which is not in the "
                               f"summary; its variants: {', '.join(names)}")
    return records


def _trajectory(name: str, records: list[dict[str, object]], x_column: str, y_column: str,
                from_runs: bool = True, intervals: bool = False) -> Trajectory:
    """The variants with both numbers; with from_runs, a failed one is left out whatever it recorded.

    The adopted path joins the adopted variants that have a baseline, in order (a cumulative roadmap); every
    other variant is joined to its baseline (an explored branch, or a leave-one-out variant to the final model).
    With `intervals`, each point carries the 95 % interval of its top-1 (top1_ci_low, top1_ci_high).
    """
    points = []
    for record in records:
        x, y = _number(record, x_column), _number(record, y_column)
        failed = from_runs and record.get("status") == Status.FAILED
        if not failed and math.isfinite(x) and math.isfinite(y):
            low, high = (_number(record, "top1_ci_low"), _number(record, "top1_ci_high")) if intervals else (
                math.nan, math.nan)
            points.append(Point(step=str(record["variant"]), label=str(record["label"]), x=x, y=y,
                                adopted=bool(record["adopted"]), y_low=low, y_high=high,
                                x_low=_number(record, "_x_low"), x_high=_number(record, "_x_high"),
                                flagged=bool(record.get("_far", False))))
    present = {point.step for point in points}
    cumulative = all(str(record.get("ablation") or "cumulative") == "cumulative" for record in records)
    adopted = [str(r["variant"]) for r in records if cumulative and r["adopted"] and r["variant"] in present]
    branches = tuple(
        (str(record["baseline"]), str(record["variant"]))
        for record in records
        if not (cumulative and record["adopted"]) and record["variant"] in present and record["baseline"] in present
    )
    return Trajectory(name=name, points=tuple(points), adopted_path=tuple(zip(adopted, adopted[1:])), branches=branches)


def _reference(roadmap: RoadmapInfo) -> Reference | None:
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


def _delta_fields(record: dict) -> dict:
    low, high = _number(record, "delta_ci_low"), _number(record, "delta_ci_high")
    return {"delta": _number(record, "delta_top1"), "delta_significant": low > 0 or high < 0,
            "delta_test": str(record.get("delta_test", "") or "")}


def significance_legend(rows: Sequence[ChartRow]) -> list[str]:
    """What each kind of mark these rows carry means: "▲/▼ Δ to the parent: 95 % interval over seeds excludes 0
    (Welch's t-test: ...)" for seed-level evidence, "△/▽ ..." for one seed's images; [] when no row is marked."""
    tests = [test for test in SIGNIFICANCE_MARKS if any(row.delta_significant and row.delta_test == test
                                                        for row in rows)]
    return [f"{'/'.join(SIGNIFICANCE_MARKS[test])} Δ to the parent: {SIGNIFICANCE_MEANINGS[test]}" for test in tests]


def _shares_paper_scale(label: StudyLabel, ours: list[tuple[float, float]], paper: list[tuple[float, float]]) -> bool:
    """Our numbers and the paper's on one axis only if the data are ImageNet-like and the accuracies are close."""
    if label.synthetic or label.data_kind.startswith("cifar") or not ours or not paper:
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



__all__ = ["MAC_CONVENTION", "AccuracyVsGmacsData", "AccuracyVsThroughputData", "ChartRow", "GroupSpan", "Point",
           "Reference", "RoadmapChartData", "StudyLabel", "SummaryError", "ThroughputPanel", "Trajectory",
           "accuracy_vs_gmacs_data", "accuracy_vs_throughput_data", "check_summary", "paper_summary",
           "roadmap_chart_data", "significance_legend", "study_label"]
