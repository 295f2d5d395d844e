"""The figures: the numbers each one draws equal the runs' or the paper's; the CLI writes them and fails cleanly."""
from __future__ import annotations

import functools
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.container import BarContainer
from matplotlib.text import Text

from roadmap.report import plot, plot_data
from roadmap.report.results import SUMMARY_COLUMNS
from roadmap.report.tables import write_results
from roadmap.steps import load_roadmap
from roadmap.variants import RoadmapInfo

REPO = Path(__file__).resolve().parent.parent
ROADMAP = load_roadmap("resnet50_to_convnext_t")
# Table 10 of the paper (mean top-1 %, std over 3 seeds, GFLOPs = GMACs), in roadmap order.
TABLE_10 = {
    "resnet50": (76.13, math.nan, 4.09), "modern_recipe": (78.82, 0.07, 4.09), "stage_ratio": (79.36, 0.07, 4.53),
    "patchify_stem": (79.51, 0.18, 4.42), "depthwise_conv": (78.28, 0.08, 2.35), "width_96": (80.50, 0.02, 5.27),
    "inverted_bottleneck": (80.64, 0.03, 4.64), "move_up_dwconv": (79.92, 0.08, 4.07), "kernel_5": (80.35, 0.08, 4.10),
    "kernel_7": (80.57, 0.14, 4.15), "kernel_9": (80.57, 0.06, 4.21), "kernel_11": (80.47, 0.11, 4.29),
    "gelu": (80.62, 0.14, 4.15), "fewer_activations": (81.27, 0.06, 4.15), "fewer_norms": (81.41, 0.09, 4.15),
    "bn_to_ln": (81.47, 0.09, 4.46), "separate_downsampling": (81.97, 0.06, 4.49),
}
EXPLORED = {"kernel_5", "kernel_9", "kernel_11"}
GROUPS = ["baseline", "training recipe", "macro design", "ResNeXt-ify", "inverted bottleneck", "large kernel",
          "micro design"]


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


# What the pipeline records: the data's description and its kind (roadmap.data.datasets).
SYNTHETIC = ("synthetic (10 classes, 2304/500 images, 32 px)", "synthetic")
IMAGENET = ("imagefolder /data/imagenet (1000 classes, 1281167/50000 images, 224 px)", "imagefolder")


def make_summary(seeds: int = 3, missing: tuple[str, ...] = (), failed: tuple[str, ...] = (),
                 data: tuple[str, str] = SYNTHETIC, imagenet_scale: bool = False, throughput: tuple[str, ...] = (),
                 significant: tuple[str, ...] = ()):
    """A summary as roadmap.report.results writes it: step i has top-1 20 + i (or Table 10's - 0.2), std
    0.1 (i + 1); the steps in `significant` have a Δ of +1 with a 95 % interval of [0.2, 1.8] (Welch)."""
    rows = []
    for step in ROADMAP.steps:
        i = step.order
        status = "failed" if step.name in failed else "missing" if step.name in missing else "finished"
        ran = status == "finished"
        paper_top1, paper_std, paper_gflops = TABLE_10[step.name]
        row = dict.fromkeys(SUMMARY_COLUMNS, math.nan) | {
            "roadmap": ROADMAP.name, "ablation": "cumulative", "order": i, "variant": step.name,
            "label": step.name.replace("_", " "), "step": step.name, "group": step.group, "adopted": step.adopted,
            "baseline": step.parent or "", "note": "", "paper_note": step.paper.get("note", ""),
            "n_seeds": seeds if ran else 0,
            "seeds": ",".join(map(str, range(seeds))) if ran else "", "status": status,
            "paper_top1": paper_top1, "paper_top1_std": paper_std, "paper_gflops": paper_gflops,
            "dataset": data[0] if status != "missing" else "", "data_kind": data[1] if status != "missing" else "",
            "preset": "smoke" if status != "missing" else "", "report": "last", "delta_test": "",
        }
        if ran:
            row |= {"top1_mean": paper_top1 - 0.2 if imagenet_scale else 20.0 + i,
                    "top1_std": 0.1 * (i + 1) if seeds > 1 else math.nan,
                    "gmacs": 0.3 + 0.01 * i, "params": 1_000_000 + 100_000 * i}
            for column in throughput:
                row[column] = 1000.0 - 10 * i + (5000 if column.startswith("bench") else 0)
            if seeds > 1:
                row |= {"top1_ci_low": row["top1_mean"] - 0.3, "top1_ci_high": row["top1_mean"] + 0.3}
            if step.name in significant:
                row |= {"delta_top1": 1.0, "delta_ci_low": 0.2, "delta_ci_high": 1.8, "delta_test": "welch"}
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def bar_containers(ax) -> list[BarContainer]:
    return [container for container in ax.containers if isinstance(container, BarContainer)]


@pytest.fixture(scope="module")
def paper_summary():
    return plot_data.paper_summary(RoadmapInfo.of(ROADMAP))


# ------------------------------------------------------------------------------------- roadmap chart


def test_paper_summary_holds_table_10_and_the_step_files(paper_summary):
    assert list(paper_summary.columns) == list(SUMMARY_COLUMNS)
    assert list(paper_summary["step"]) == list(TABLE_10)
    assert set(paper_summary["status"]) == {"paper"}
    for record in paper_summary.to_dict("records"):
        top1, std, gflops = TABLE_10[record["step"]]
        assert (record["paper_top1"], record["paper_gflops"]) == (top1, gflops)
        assert same(record["paper_top1_std"], std)
        assert math.isnan(record["top1_mean"]) and math.isnan(record["gmacs"])


def test_paper_chart_draws_table_10(paper_summary):
    data = plot_data.roadmap_chart_data(paper_summary, ROADMAP)
    assert [row.step for row in data.rows] == list(TABLE_10)
    for row in data.rows:
        top1, std, gflops = TABLE_10[row.step]
        assert (row.top1, row.gmacs, row.paper_top1, row.paper_gflops) == (top1, gflops, top1, gflops)
        assert same(row.top1_std, std)
    assert {row.step for row in data.rows if row.hatched} == EXPLORED
    assert [span.name for span in data.groups] == GROUPS
    assert data.rows[4].annotation == "2.35G" and data.rows[8].annotation == "4.10G"
    # Table 10's GFLOPs for these two are not conv + linear MACs: marked, with the step file's note.
    assert [row.step for row in data.rows if row.annotation.endswith("*")] == ["bn_to_ln", "separate_downsampling"]
    assert data.reference == plot_data.Reference("Swin-T", 81.3, 4.5)
    assert not data.paper_panel and not data.paper_markers
    assert data.xlim[0] <= 76.13 and data.xlim[1] > 82.03
    assert "Table 10" in data.label.caption and plot_data.MAC_CONVENTION in data.label.caption


def test_paper_chart_of_another_roadmap_names_its_table():
    roadmap_b = load_roadmap("resnet200_to_convnext_b")
    summary = plot_data.paper_summary(RoadmapInfo.of(roadmap_b))
    data = plot_data.roadmap_chart_data(summary, roadmap_b)
    assert data.label.paper_source == "paper (Table 11)" and data.reference.name == "Swin-B"
    assert [row.top1 for row in data.rows] == [step.paper["top1"] for step in roadmap_b.steps]
    assert not data.label.paper_has_std and "no std published" in data.label.caption
    assert plot_data.accuracy_vs_gmacs_data(summary, roadmap_b) is None  # Table 11 gives no GFLOPs per step


def test_chart_from_several_seeds_on_synthetic_data():
    summary = make_summary(seeds=3)
    data = plot_data.roadmap_chart_data(summary, ROADMAP)
    for row, record in zip(data.rows, summary.to_dict("records")):
        assert row.step == record["step"]
        assert row.top1 == record["top1_mean"] == 20.0 + record["order"]
        assert row.top1_std == pytest.approx(0.1 * (record["order"] + 1))
        assert row.paper_top1 == TABLE_10[row.step][0]
        assert row.drawn
    assert data.rows[2].annotation == "0.32G · 1.2M"
    assert {row.step for row in data.rows if row.hatched} == EXPLORED
    spans = {span.name: (span.first_row, span.last_row) for span in data.groups}
    assert [span.name for span in data.groups] == GROUPS
    assert spans["large kernel"] == (7, 11) and spans["micro design"] == (12, 16)
    # Synthetic accuracies are no match for ImageNet's: the paper gets its own panel and scale.
    assert data.paper_panel and not data.paper_markers
    assert data.xlim[0] <= 20.0 - 0.1 and data.xlim[1] >= 36.0 + 1.7 and data.xlim[1] < 70
    assert data.paper_xlim[0] <= 76.13 and data.paper_xlim[1] > 81.97
    assert data.label.seeds == (3,)
    assert "SYNTHETIC" in data.label.caption and "smoke" in data.label.caption
    assert "3 seeds per step" in data.label.caption and plot_data.MAC_CONVENTION in data.label.caption


def test_drawn_chart_bars_match_the_data():
    data = plot_data.roadmap_chart_data(make_summary(seeds=3, missing=("kernel_9",)), ROADMAP)
    fig = plot.draw_roadmap_chart(data)
    group_axis, ours, paper = fig.axes
    bars = [patch for container in bar_containers(ours) for patch in container.patches]
    assert [bar.get_x() + bar.get_width() for bar in bars] == pytest.approx(
        [row.top1 if row.drawn else data.xlim[1] for row in data.rows])
    # Explored steps are hatched; a missing one is an empty dashed slot instead.
    assert [bar.get_hatch() for bar in bars] == ["////" if row.hatched and row.drawn else None for row in data.rows]
    assert [bar.get_linestyle() for bar in bars].count("--") == 1
    errors = [container.errorbar for container in bar_containers(ours) if container.errorbar is not None]
    assert len(errors) == 16  # every drawn bar has a std over 3 seeds; the missing slot has none
    paper_bars = [patch for container in bar_containers(paper) for patch in container.patches]
    assert [bar.get_x() + bar.get_width() for bar in paper_bars] == pytest.approx([t for t, _, _ in TABLE_10.values()])
    assert [label.get_text() for label in ours.get_yticklabels()][:3] == ["resnet50", "modern recipe", "stage ratio"]
    assert [text.get_text() for text in group_axis.texts] == GROUPS
    assert "not run yet" in [text.get_text() for text in ours.texts]
    assert [line.get_xdata()[0] for line in paper.lines if line.get_linestyle() == "--"] == [81.3]


def test_chart_with_one_seed_missing_and_failed_steps_on_imagenet():
    summary = make_summary(seeds=1, missing=("kernel_9", "gelu"), failed=("bn_to_ln",),
                           data=IMAGENET, imagenet_scale=True)
    data = plot_data.roadmap_chart_data(summary, ROADMAP)
    by_step = {row.step: row for row in data.rows}
    assert [by_step[name].empty_text for name in ("kernel_9", "gelu", "bn_to_ln")] == [
        "not run yet", "not run yet", "failed"]
    assert {row.step for row in data.rows if not row.drawn} == {"kernel_9", "gelu", "bn_to_ln"}
    assert by_step["stage_ratio"].top1 == pytest.approx(79.16) and math.isnan(by_step["stage_ratio"].top1_std)
    # Same data set, accuracies close to the paper's: one axis, the paper as a marker on each row.
    assert not data.paper_panel and data.paper_markers
    assert [row.paper_top1 for row in data.rows] == [t for t, _, _ in TABLE_10.values()]
    assert data.xlim[0] <= 75.93 and data.xlim[1] >= 81.97
    assert data.label.seeds == (1,) and "1 seed per step" in data.label.caption
    fig = plot.draw_roadmap_chart(data)
    ours = fig.axes[1]
    assert sorted(text.get_text() for text in ours.texts if text.get_text() in ("not run yet", "failed")) == [
        "failed", "not run yet", "not run yet"]
    markers = [line for line in ours.lines if line.get_marker() == "D"]
    assert [line.get_xdata()[0] for line in markers] == [t for t, _, _ in TABLE_10.values()]
    assert not [c for c in bar_containers(ours) if c.errorbar is not None]  # one seed: no std
    assert "paper (Table 10)" in [text.get_text() for text in fig.legends[0].get_texts()]


# --------------------------------------------------------------------------------- accuracy vs GMACs


def test_accuracy_vs_gmacs_points_and_paths():
    summary = make_summary(seeds=3, missing=("kernel_5",), failed=("gelu",))
    data = plot_data.accuracy_vs_gmacs_data(summary, ROADMAP)
    records = summary.to_dict("records")
    expected = [(r["step"], r["gmacs"], r["top1_mean"]) for r in records if r["status"] == "finished"]
    assert [(p.step, p.x, p.y) for p in data.study.points] == expected
    adopted = [name for name, *_ in expected if name not in EXPLORED]
    assert data.study.adopted_path == tuple(zip(adopted, adopted[1:]))
    assert ("kernel_7", "fewer_activations") in data.study.adopted_path  # gelu failed: the path skips it
    assert data.study.branches == (("move_up_dwconv", "kernel_9"), ("move_up_dwconv", "kernel_11"))
    assert [(p.step, p.x, p.y) for p in data.paper.points] == [(s, g, t) for s, (t, _, g) in TABLE_10.items()]
    assert len(data.paper.branches) == 3 and data.paper_panel
    fig = plot.draw_accuracy_vs_gmacs(data)
    assert len(fig.axes) == 2
    assert sorted(text.get_text() for text in fig.axes[0].texts if text.get_text()) == sorted(
        name.replace("_", " ") for name, *_ in expected)


def test_accuracy_vs_gmacs_from_the_paper(paper_summary):
    data = plot_data.accuracy_vs_gmacs_data(paper_summary, ROADMAP)
    assert data.study is None and not data.paper_panel
    assert [(p.x, p.y) for p in data.paper.points] == [(g, t) for t, _, g in TABLE_10.values()]
    assert [p.adopted for p in data.paper.points] == [name not in EXPLORED for name in TABLE_10]
    assert len(data.paper.adopted_path) == 13
    assert len(plot.draw_accuracy_vs_gmacs(data).axes) == 1


# ----------------------------------------------------------------------------- accuracy vs throughput


def test_throughput_prefers_the_benchmark_over_the_training_run():
    summary = make_summary(seeds=2, throughput=("train_img_per_s", "eval_img_per_s", "bench_eval_img_per_s"))
    data = plot_data.accuracy_vs_throughput_data(summary, ROADMAP)
    assert [panel.column for panel in data.panels] == ["train_img_per_s", "bench_eval_img_per_s"]
    assert "benchmark" in data.panels[1].xlabel and "during training" in data.panels[0].xlabel
    assert [(p.x, p.y) for p in data.panels[1].trajectory.points] == list(
        zip(summary["bench_eval_img_per_s"], summary["top1_mean"]))
    assert len(plot.draw_accuracy_vs_throughput(data).axes) == 2


def test_throughput_figure_is_skipped_without_measurements(paper_summary):
    assert plot_data.accuracy_vs_throughput_data(make_summary(), ROADMAP) is None
    assert plot_data.accuracy_vs_throughput_data(paper_summary, ROADMAP) is None


# ------------------------------------------------------------------------------------ errors and files


def test_bad_summaries_are_one_line_errors():
    with pytest.raises(plot_data.SummaryError, match="lacks columns: top1_mean; a roadmap summary has") as error:
        plot_data.roadmap_chart_data(make_summary().drop(columns=["top1_mean"]), ROADMAP)
    assert "\n" not in str(error.value)
    other = make_summary().assign(roadmap="resnet200_to_convnext_b")
    with pytest.raises(plot_data.SummaryError, match="holds roadmap 'resnet200_to_convnext_b', not 'resnet50_to_conv"):
        plot_data.accuracy_vs_gmacs_data(other, ROADMAP)
    unknown = make_summary()
    unknown.loc[3, "baseline"] = "patchify"
    with pytest.raises(plot_data.SummaryError, match="variant patchify_stem is compared with 'patchify', which is not "
                                                     "in the summary; its variants: resnet50, "):
        plot_data.roadmap_chart_data(unknown, ROADMAP)


def test_save_figure_writes_each_format(tmp_path, paper_summary):
    fig = plot.draw_roadmap_chart(plot_data.roadmap_chart_data(paper_summary, ROADMAP))
    paths = plot.save_figure(fig, tmp_path / "out", "roadmap", ("png", "svg", "pdf"), dpi=50)
    assert [path.name for path in paths] == ["roadmap.png", "roadmap.svg", "roadmap.pdf"]
    assert paths[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in paths[1].read_text()[:2000]
    assert paths[2].read_bytes().startswith(b"%PDF")
    with pytest.raises(plot_data.SummaryError, match="unknown figure format 'jpg'; valid formats: png, svg, pdf"):
        plot.save_figure(fig, tmp_path, "roadmap", ("jpg",))


@functools.cache
def plot_command():
    """plot_roadmap.main, loaded from the repository root (which need not be on sys.path)."""
    spec = importlib.util.spec_from_file_location("plot_roadmap", REPO / "plot_roadmap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_plot(*args: str):
    return CliRunner().invoke(plot_command(), list(args))


def written(output: str) -> list[Path]:
    return [Path(line.removeprefix("wrote ")) for line in output.splitlines() if line.startswith("wrote ")]


def test_cli_draws_a_saved_csv(tmp_path):
    csv_path, _ = write_results(make_summary(seeds=3, missing=("gelu",), failed=("kernel_9",),
                                             throughput=("bench_train_img_per_s",)), tmp_path / "study")
    result = run_plot("--csv", str(csv_path), "--format", "png,svg", "--dpi", "60")
    assert result.exit_code == 0, result.output
    paths = written(result.stdout)
    stems = ("roadmap", "accuracy_vs_gmacs", "accuracy_vs_throughput")
    assert sorted(path.name for path in paths) == sorted(f"{stem}.{fmt}" for stem in stems for fmt in ("png", "svg"))
    assert all(path.parent == tmp_path / "study" and path.stat().st_size > 1000 for path in paths)
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths if path.suffix == ".png")


def test_cli_paper_writes_png_and_svg_without_torch_or_mlflow(tmp_path):
    # A fresh interpreter: the figures must never import torch (nor MLflow, when no tracking store is read).
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['plot_roadmap.py', '--paper', '--out', {str(tmp_path)!r}, '--dpi', '60']\n"
        "try:\n    runpy.run_path('plot_roadmap.py', run_name='__main__')\n"
        "except SystemExit as done:\n    assert done.code in (0, None), done.code\n"
        "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, 'torch or mlflow imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in written(result.stdout)) == [
        "accuracy_vs_gmacs.png", "accuracy_vs_gmacs.svg", "roadmap.png", "roadmap.svg"]
    assert "skipped accuracy_vs_throughput" in result.stdout
    assert (tmp_path / "roadmap.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in (tmp_path / "roadmap.svg").read_text()[:2000]


def test_cli_paper_draws_the_resnet200_roadmap(tmp_path, monkeypatch):
    # Table 11 gives top-1 only, no GFLOPs per step: the chart draws without them and without any "nan".
    roadmap_b = load_roadmap("resnet200_to_convnext_b")
    table_11 = [step.paper["top1"] for step in roadmap_b.steps]
    drawn = []  # (data, figure) of each roadmap chart the CLI draws
    draw = plot.draw_roadmap_chart
    monkeypatch.setattr(plot, "draw_roadmap_chart", lambda data: drawn.append((data, draw(data))) or drawn[-1][1])
    result = run_plot("--paper", "--roadmap", roadmap_b.name, "--out", str(tmp_path), "--dpi", "60")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in written(result.stdout)) == ["roadmap.png", "roadmap.svg"]
    assert "skipped accuracy_vs_gmacs" in result.stdout
    [(data, fig)] = drawn
    assert data.reference is not None and (data.reference.name, data.reference.top1) == ("Swin-B", 83.5)
    assert [row.paper_top1 for row in data.rows] == [row.top1 for row in data.rows] == table_11
    assert all(math.isnan(row.paper_gflops) and row.annotation == "" for row in data.rows)
    group_axis, bars_axis = fig.axes
    bars = [patch for container in bar_containers(bars_axis) for patch in container.patches]
    assert [bar.get_x() + bar.get_width() for bar in bars] == pytest.approx(table_11)
    assert [line.get_xdata()[0] for line in bars_axis.lines if line.get_linestyle() == "--"] == [83.5]
    texts = [text.get_text() for text in fig.findobj(Text) if text.get_text()]
    assert "Swin-B 83.5%" in " ".join(texts) and not [text for text in texts if "nan" in text.lower()]


@pytest.mark.parametrize("args, message", [
    (["--paper", "--roadmap", "nope"], "unknown roadmap 'nope'; valid roadmaps: resnet200_to_convnext_b, "
                                       "resnet50_to_convnext_t"),
    (["--paper", "--format", "png,gif"], "'gif' is not a figure format; valid: png, svg, pdf"),
    (["--paper", "--dpi", "5"], "--dpi"),
    (["--csv", "no/such.csv"], "results file no/such.csv does not exist"),
    (["--paper", "--csv", "x.csv"], "--paper and --csv exclude each other"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    result = run_plot(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_cli_csv_lacking_columns_is_exit_2(tmp_path):
    csv_path = tmp_path / "roadmap.csv"
    make_summary().drop(columns=["top1_mean", "gmacs"]).to_csv(csv_path, index=False)
    result = run_plot("--csv", str(csv_path))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "lacks the columns: top1_mean, gmacs" in result.stderr


def test_cli_unknown_experiment_is_exit_2(tmp_path):
    result = run_plot("--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "nope")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "experiment 'nope' not found in sqlite:///" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------------- what the data are


def test_the_caption_follows_the_recorded_data_kind_not_the_description():
    synthetic = plot_data.roadmap_chart_data(make_summary(data=SYNTHETIC), ROADMAP)
    assert synthetic.label.synthetic and "SYNTHETIC data" in synthetic.label.caption
    # A description that does not start with the kind still says what the data are.
    renamed = plot_data.roadmap_chart_data(make_summary(data=("built-in shapes (10 classes)", "synthetic")), ROADMAP)
    assert "SYNTHETIC data" in renamed.label.caption
    real = plot_data.roadmap_chart_data(make_summary(data=IMAGENET, imagenet_scale=True), ROADMAP)
    assert not real.label.synthetic and "SYNTHETIC" not in real.label.caption and "imagefolder" in real.label.caption


# ------------------------------------------------------------------------------------------ significance


def test_significant_deltas_are_marked_by_their_kind_of_evidence_and_the_caption_says_which():
    summary = make_summary(seeds=3, significant=("stage_ratio", "gelu"))
    # gelu's interval comes from one seed's validation images (McNemar): evaluation noise only.
    summary.loc[summary["step"] == "gelu", "delta_test"] = "mcnemar"
    data = plot_data.roadmap_chart_data(summary, ROADMAP)
    marked = {row.step for row in data.rows if row.delta_significant}
    assert marked == {"stage_ratio", "gelu"}
    by_step = {row.step: row for row in data.rows}
    assert by_step["stage_ratio"].annotation.endswith("Δ+1.00▲") and by_step["gelu"].annotation.endswith("Δ+1.00△")
    assert not any("Δ" in row.annotation for row in data.rows if row.step not in marked)
    caption = plot.draw_roadmap_chart(data).legends[0].get_title().get_text().replace("\n", " ")
    assert "▲/▼ Δ to the parent: 95 % interval over seeds excludes 0 (Welch's" in caption
    assert "△/▽ Δ to the parent: one seed: 95 % interval over its validation images excludes 0" in caption
    assert "evaluation noise only" in caption
    unmarked = plot.draw_roadmap_chart(plot_data.roadmap_chart_data(make_summary(seeds=3), ROADMAP))
    assert "excludes 0" not in unmarked.legends[0].get_title().get_text()


def test_accuracy_vs_gmacs_draws_each_steps_interval_as_an_error_bar():
    summary = make_summary(seeds=3)
    data = plot_data.accuracy_vs_gmacs_data(summary, ROADMAP)
    # pytest.approx takes flat sequences only (pytest >= 9): compare the (low, high) pairs flattened.
    assert [bound for p in data.study.points for bound in (p.y_low, p.y_high)] == pytest.approx(
        [bound for pair in zip(summary["top1_ci_low"], summary["top1_ci_high"]) for bound in pair])
    fig = plot.draw_accuracy_vs_gmacs(data)
    segments = [segment for collection in fig.axes[0].collections if hasattr(collection, "get_segments")
                for segment in collection.get_segments()]
    spans = sorted((float(seg[0][1]), float(seg[1][1])) for seg in segments if seg[0][0] == seg[1][0])
    assert [bound for span in spans for bound in span] == pytest.approx(
        [bound for pair in sorted(zip(summary["top1_ci_low"], summary["top1_ci_high"])) for bound in pair])
    assert "error bars: 95 % interval" in fig.legends[0].get_title().get_text()
