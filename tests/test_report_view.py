"""What a researcher sees: a terminal summary that fits, counts that say what they count, legible figures that draw
the paper's numbers and the noise of the measurements, marks that say what evidence they rest on, MLflow links."""
from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest
from matplotlib.text import Text

from roadmap.errors import SpecError
from roadmap.report import plot, plot_data
from roadmap.report.figure_data import StudyLabel
from roadmap.report.leave_one_out import draw_leave_one_out, leave_one_out_data
from roadmap.report.repeats import Repeats
from roadmap.report.report_summary import read_report_csv
from roadmap.report.results import SUMMARY_COLUMNS
from roadmap.report.tables import TERMINAL_WIDTH, terminal_summary, write_results
from roadmap.steps import load_roadmap
from roadmap.variants import RoadmapInfo

ROADMAP = load_roadmap("resnet50_to_convnext_t")
INFO = RoadmapInfo.of(ROADMAP)
SYNTHETIC = "synthetic (10 classes, 2304/2500 images, 32 px)"


def summary_of(names, *, top1, gmacs=None, seeds=3, ablation="cumulative", **columns) -> pd.DataFrame:
    """A results summary of the roadmap's first steps `names` (cumulative) with the given top-1s and GMACs."""
    rows = []
    for order, name in enumerate(names):
        step = ROADMAP.step(name) if ablation == "cumulative" else ROADMAP.steps[-1]
        row = dict.fromkeys(SUMMARY_COLUMNS, math.nan) | {
            "roadmap": ROADMAP.name, "ablation": ablation, "order": order, "variant": name,
            "label": name.replace("_", " "), "step": step.name, "group": step.group, "adopted": step.adopted,
            "baseline": (step.parent or "") if ablation == "cumulative" else ("" if order == 0 else names[0]),
            "config_hash": f"hash-{name}", "note": "", "paper_note": "", "n_seeds": seeds,
            "seeds": ",".join(map(str, range(seeds))), "status": "finished", "report": "last", "delta_test": "",
            "delta_basis": "", "dataset": SYNTHETIC, "data_kind": "synthetic", "preset": "demo",
            "top1_mean": top1[order], "top1_std": 0.5 if seeds > 1 else math.nan,
            "gmacs": gmacs[order] if gmacs else 0.3, "params": 1.5e6,
            "paper_top1": step.paper.get("top1", math.nan) if ablation == "cumulative" else math.nan,
            "paper_gflops": step.paper.get("gflops", math.nan) if ablation == "cumulative" else math.nan,
        }
        rows.append(row | {key: value[order] for key, value in columns.items()})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS) + [c for c in columns if c not in SUMMARY_COLUMNS])


UPTO_BN_TO_LN = ROADMAP.names()[:16]


def label_boxes(ax, renderer) -> list:
    """The box of each name's text (Text's own extent: an annotation's would include its leader line)."""
    return [Text.get_window_extent(text, renderer) for text in ax.texts if text.get_text().strip()]


def overlaps(boxes) -> list:
    return [(a, b) for a, b in itertools.combinations(boxes, 2)
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5]


def assert_labels_legible(fig) -> None:
    """No two point names overlap, none covers a marker, each lies inside its axes."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    for ax in fig.axes:
        boxes = label_boxes(ax, renderer)
        assert boxes, "no point is named"
        assert overlaps(boxes) == []
        frame = ax.get_window_extent(renderer)
        for box in boxes:
            assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1
            assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
        markers = [(x, y) for line in ax.get_lines() if line.get_marker() == "o" and line.get_markersize() <= 7
                   for x, y in ax.transData.transform(line.get_xydata())]
        radius = 3 * fig.dpi / 72  # markers of 6 pt
        for box, (x, y) in itertools.product(boxes, markers):
            assert not (box.x0 < x + radius and x - radius < box.x1 and box.y0 < y + radius and y - radius < box.y1)


# ------------------------------------------------------------------------------------------- figures


def test_steps_beyond_upto_are_not_in_this_study_and_the_paper_is_drawn_for_them():
    summary = summary_of(UPTO_BN_TO_LN, top1=[20.0 + i for i in range(16)], gmacs=[0.3 + 0.01 * i for i in range(16)])
    chart = plot_data.roadmap_chart_data(summary, INFO)
    last = chart.rows[-1]
    assert [row.step for row in chart.rows] == ROADMAP.names()  # separate_downsampling included, beyond --upto
    assert not last.drawn and last.empty_text == "not in this study" and last.paper_top1 == 81.97
    fig = plot.draw_roadmap_chart(chart)
    ours, paper = fig.axes[1], fig.axes[2]
    assert "not in this study" in [text.get_text() for text in ours.texts]
    assert "missing" not in [text.get_text() for text in ours.texts]
    paper_bars = [patch.get_x() + patch.get_width() for container in paper.containers
                  for patch in getattr(container, "patches", [])]
    assert paper_bars[-1] == pytest.approx(81.97)
    assert "empty: not in this study (beyond --upto)" in [t.get_text() for t in fig.legends[0].get_texts()]
    gmacs = plot_data.accuracy_vs_gmacs_data(summary, INFO)
    assert gmacs.paper.points[-1].step == "separate_downsampling" and gmacs.paper.points[-1].y == 81.97
    assert [point.step for point in gmacs.study.points] == UPTO_BN_TO_LN


def test_crowded_points_get_names_that_never_overlap_each_other_or_a_marker():
    """The demo's knot: six steps share one GMACs figure and lie within a point of top-1 of each other."""
    top1 = [14.0, 40.8, 39.6, 29.6, 25.1, 32.6, 30.5, 30.8, 29.5, 30.1, 33.3, 29.6, 30.3, 30.9, 30.6, 30.4]
    gmacs = [0.00567, 0.00567, 0.00623, 0.00567, 0.00309, 0.00685, 0.00628, 0.00531, 0.00547, 0.00572, 0.00605,
             0.00646, 0.00572, 0.00572, 0.00572, 0.00572]
    summary = summary_of(UPTO_BN_TO_LN, top1=top1, gmacs=gmacs, seeds=1)
    fig = plot.draw_accuracy_vs_gmacs(plot_data.accuracy_vs_gmacs_data(summary, INFO))
    assert_labels_legible(fig)
    names = " ".join(text.get_text() for text in fig.axes[0].texts)
    assert all(step.replace("_", " ") in names for step in UPTO_BN_TO_LN)  # every step is named


def test_points_drawn_on_top_of_each_other_share_one_name():
    summary = summary_of(["resnet50", "modern_recipe", "stage_ratio"], top1=[30.0, 30.0, 35.0], seeds=1)
    fig = plot.draw_accuracy_vs_gmacs(plot_data.accuracy_vs_gmacs_data(summary, INFO))
    assert "resnet50 / modern recipe" in [text.get_text() for text in fig.axes[0].texts]
    assert_labels_legible(fig)


def test_a_disturbed_repeat_is_flagged_and_the_others_are_not():
    assert Repeats((4000.0, 4100.0, 3900.0, 76.0)).far == (76.0,)
    assert Repeats((300.0, 320.0, 290.0)).far == ()
    assert Repeats((250.0,)).far == () and Repeats(()).far == ()
    assert Repeats((4000.0, 76.0)).median == pytest.approx(2038.0)  # two repeats that disagree: both flagged
    assert len(Repeats((4000.0, 76.0)).far) == 2


def test_throughput_draws_the_spread_of_the_repeats_rings_a_disturbed_one_and_names_the_device():
    names = ROADMAP.names()[:4]
    summary = summary_of(
        names, top1=[20.0, 25.0, 24.0, 27.0], seeds=2,
        train_img_per_s=[300.0, 290.0, 280.0, 270.0], eval_img_per_s=[2000.0, 4000.0, 3900.0, 3800.0],
        train_img_per_s_median=[300.0, 290.0, 280.0, 270.0], train_img_per_s_low=[280.0, 270.0, 260.0, 250.0],
        train_img_per_s_high=[320.0, 310.0, 300.0, 290.0], train_img_per_s_repeats=[8, 8, 8, 8],
        train_img_per_s_far=[0, 0, 0, 0],
        eval_img_per_s_median=[2038.0, 4000.0, 3900.0, 3800.0], eval_img_per_s_low=[76.0, 3990.0, 3890.0, 3790.0],
        eval_img_per_s_high=[4000.0, 4010.0, 3910.0, 3810.0], eval_img_per_s_repeats=[2, 2, 2, 2],
        eval_img_per_s_far=[2, 0, 0, 0],
        train_setting=["cpu x1 · batch 64 (64 per forward pass) · fp32"] * 4,
        eval_setting=["cpu x1 · batch 64 per process · fp32"] * 4,
    )
    data = plot_data.accuracy_vs_throughput_data(summary, INFO)
    train, evaluation = data.panels
    assert [p.x for p in evaluation.trajectory.points] == [2038.0, 4000.0, 3900.0, 3800.0]  # medians, not means
    assert [(p.x_low, p.x_high) for p in train.trajectory.points][0] == (280.0, 320.0)
    assert [p.flagged for p in evaluation.trajectory.points] == [True, False, False, False]
    assert not any(p.flagged for p in train.trajectory.points)
    fig = plot.draw_accuracy_vs_throughput(data)
    rings = [line for line in fig.axes[1].get_lines() if line.get_markersize() > 10]
    assert len(rings) == 1 and list(rings[0].get_xdata()) == [2038.0]
    assert fig.axes[0].get_title() == "measured on cpu x1 · batch 64 (64 per forward pass) · fp32"
    caption = fig.legends[0].get_title().get_text()
    assert "GFLOPs" not in caption and "GMACs" not in caption  # nothing here is counted in MACs
    assert "re-measure with run_ablation.py --benchmark" in caption.replace("\n", " ")
    assert_labels_legible(fig)


def test_a_figure_redrawn_from_the_csv_is_the_figure_drawn_from_the_summary(tmp_path):
    names = ROADMAP.names()[:3]
    summary = summary_of(names, top1=[20.0, 25.0, 24.0], seeds=2, train_img_per_s=[300.0, 290.0, 280.0],
                         eval_img_per_s=[4000.0, 3900.0, 3800.0], eval_img_per_s_median=[4000.0, 3900.0, 3800.0],
                         eval_img_per_s_low=[3900.0, 3800.0, 76.0], eval_img_per_s_high=[4100.0, 4000.0, 3900.0],
                         eval_img_per_s_repeats=[2, 2, 2], eval_img_per_s_far=[0, 0, 2],
                         eval_setting=["cpu x1 · batch 64 per process · fp32"] * 3)
    csv_path, _ = write_results(summary, tmp_path)
    back = read_report_csv(csv_path)
    first = plot.draw_figures(summary, INFO, tmp_path / "a", ("png",), dpi=40)
    second = plot.draw_figures(back, INFO, tmp_path / "b", ("png",), dpi=40)
    assert [stem for stem, paths, _ in first if paths] == ["roadmap", "accuracy_vs_gmacs", "accuracy_vs_throughput"]
    for (_, ours, _), (_, theirs, _) in zip(first, second):
        assert [path.read_bytes() for path in ours] == [path.read_bytes() for path in theirs]


def test_captions_say_what_the_counts_count_and_name_synthetic_data_once():
    label = StudyLabel(SYNTHETIC, "synthetic", "demo", (1,), False, "paper (Table 10)", "ImageNet-1K", True)
    assert label.caption.startswith("SYNTHETIC data (10 classes, 2,304 train / 2,500 val images, 32 px): ")
    assert "synthetic (" not in label.caption and "1 seed per step" in label.caption
    real = StudyLabel("imagefolder /data/in (1000 classes, 1281167/50000 images, 224 px)", "imagefolder", "paper",
                      (3,), False, "paper (Table 10)", "ImageNet-1K", True)
    assert "data: imagefolder /data/in: 1000 classes, 1,281,167 train / 50,000 val images, 224 px" in real.caption


def test_leave_one_out_marks_say_whether_the_evidence_is_over_seeds_or_one_seeds_images():
    names = ["separate_downsampling", "without_gelu", "without_bn_to_ln", "without_kernel_7"]
    summary = summary_of(names, top1=[30.0, 28.0, 27.0, 30.5], seeds=1, ablation="leave-one-out",
                         delta_top1=[math.nan, -2.0, -3.0, 0.5], delta_ci_low=[math.nan, -3.0, -4.0, -0.5],
                         delta_ci_high=[math.nan, -1.0, -2.0, 1.5], delta_test=["", "welch", "mcnemar", "mcnemar"])
    summary["step"] = ["separate_downsampling", "gelu", "bn_to_ln", "kernel_7"]
    data = leave_one_out_data(summary, INFO)
    fig = draw_leave_one_out(data)
    texts = [text.get_text() for text in fig.axes[0].texts]
    assert "-2.00▼" in texts and "-3.00▽" in texts and "+0.50" in texts
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert any(text.startswith("▲/▼ 95 % interval over seeds excludes 0") for text in legend)
    assert any(text.startswith("△/▽ one seed") and "evaluation noise only" in text for text in legend)
    # The paper's numbers where it has them: each step's Δ when it was added, negated.
    by_step = {row.step: row for row in data.rows}
    assert by_step["bn_to_ln"].paper_delta == pytest.approx(-(81.47 - 81.41))
    assert any(text.startswith("paper (Table 10): minus the step's Δ") for text in legend)


# ------------------------------------------------------------------------------------------- terminal


def long_summary(seeds: int) -> pd.DataFrame:
    names = ROADMAP.names()
    n = len(names)
    return summary_of(names, top1=[100.0 - i for i in range(n)], seeds=seeds,
                      delta_top1=[math.nan] + [-12.34] * (n - 1), delta_ci_low=[math.nan] + [-14.56] * (n - 1),
                      delta_ci_high=[math.nan] + [-10.12] * (n - 1),
                      delta_test=[""] + ["welch" if seeds > 1 else "mcnemar"] * (n - 1))


@pytest.mark.parametrize("seeds", [1, 3])
def test_the_terminal_summary_fits_100_columns_with_the_essential_columns(seeds):
    summary = long_summary(seeds)
    summary["top1_std"] = 10.25 if seeds > 1 else math.nan
    summary.loc[5, ["status", "note"]] = ["identical", "same configuration as without_kernel_7 (kernel 7 is the "
                                                       "default of every later step), trained once"]
    power = "power: 0 of 16 paper Δs resolvable with 1 seed(s); " + "this line is long " * 10
    text = terminal_summary(summary, "Table 10", power, seeds_asked=range(seeds))
    lines = text.splitlines()
    assert max(map(len, lines)) <= TERMINAL_WIDTH
    header = next(line for line in lines if line.lstrip().startswith("#"))
    assert all(word in header for word in ("variant", "top-1", "Δ top-1 [95 % interval]", "seeds"))
    row = next(line for line in lines if " modern_recipe " in line)
    assert "99.00" in row and "-12.34 [-14.56, -10.12]" in row and f"{seeds} of {seeds}" in row
    assert ("± 10.25" in row) == (seeds > 1)
    assert ("▼" in row) == (seeds > 1) and ("▽" in row) == (seeds == 1)
    assert "kernel_5 (explored)" in text and "2,304 train / 2,500 val images" in text
    assert "synthetic (" not in text and f"seeds asked: {','.join(map(str, range(seeds)))}" in text
    meaning = "over seeds excludes 0" if seeds > 1 else "evaluation noise only"
    assert meaning in text.replace("\n  ", " ")


# ------------------------------------------------------------------------------------ names and links


@pytest.mark.parametrize("lookup, message", [
    (lambda: ROADMAP.step("bn_to_lnn"), "did you mean 'bn_to_ln'?"),
    (lambda: load_roadmap("resnet50_to_convnext"), "did you mean 'resnet50_to_convnext_t'?"),
    (lambda: __import__("roadmap.study.presets", fromlist=["get_preset"]).get_preset("smok"), "did you mean 'smoke'?"),
])
def test_a_mistyped_name_gets_a_did_you_mean_and_the_valid_names(lookup, message):
    with pytest.raises(SpecError) as error:
        lookup()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unrelated_name_gets_no_guess():
    from roadmap.spec import did_you_mean

    with pytest.raises(SpecError) as error:
        ROADMAP.step("quantum_tunnelling")
    assert "did you mean" not in str(error.value) and "valid steps: resnet50" in str(error.value)
    # Another real name is not a typo: fp16 is no misspelt bf16, tpu no misspelt cpu.
    assert did_you_mean("fp16", ("fp32", "bf16")) == "" and did_you_mean("tpu", ("cpu", "cuda")) == ""
    assert did_you_mean("mixup", ("mixup_alpha", "cutmix_alpha")) == " did you mean 'mixup_alpha'?"


def test_links_open_the_model_training_view_on_the_saved_view_of_the_step_runs(tmp_path):
    from mlflow import MlflowClient

    from roadmap.tracking import Tracker
    from roadmap.tracking.ui_links import SAVED_VIEW_PREFIX, STEP_RUNS_VIEW

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "links", description="a study", system_metrics=False)
    url = tracker.runs_view_url()
    assert url == (f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?"
                   f"workflowType=machine_learning&viewStateShareKey={STEP_RUNS_VIEW}")
    assert tracker.run_url("abc") == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/abc?" \
                                     "workflowType=machine_learning"
    tags = MlflowClient(uri).get_experiment(tracker.experiment_id).tags
    envelope = json.loads(tags[SAVED_VIEW_PREFIX + STEP_RUNS_VIEW])
    assert {"name", "createdAt", "updatedAt", "state"} <= set(envelope) and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])  # what MLflow 3.17's UI restores: filter, sort, columns
    assert state["searchFilter"] == "tags.run_kind = 'step'" and state["orderByKey"] != "attributes.start_time"
    assert state["selectedColumns"][:4] == ["tags.`step`", "tags.`seed`", "metrics.`top1`", "metrics.`delta_top1`"]
    assert state["columnOrder"] == state["selectedColumns"]


def test_the_dry_run_table_marks_how_many_seeds_of_each_variant_are_finished_already():
    import dataclasses

    from helpers import plan_with_hashes

    from roadmap.study.plan_table import format_plan_table, variant_rows

    plan = plan_with_hashes("resnet50_to_convnext_t", seeds=(0, 1))
    plan = dataclasses.replace(plan, variants=plan.variants[:3])
    table = format_plan_table(plan, variant_rows(plan), frozenset({("hash-modern_recipe", 0),
                                                                    ("hash-modern_recipe", 1), ("hash-resnet50", 1)}))
    lines = table.splitlines()
    assert lines[3].rstrip().endswith("finished")
    rows = {line.split()[1]: line.split()[-1] for line in lines[5:]}
    assert rows == {"resnet50": "1/2", "modern_recipe": "2/2", "stage_ratio": "0/2"}
