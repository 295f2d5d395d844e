"""`plot_roadmap.py` (installed as `plot-roadmap`): a study's figures from MLflow, a saved CSV or the paper alone."""
from __future__ import annotations

from pathlib import Path

import click

from ..steps import load_roadmap
from ..variants import RoadmapInfo
from .common import OneLineErrors

DEFAULT_ROADMAP = "resnet50_to_convnext_t"
FORMAT_CHOICES = ("png", "svg", "pdf")


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--tracking-uri", metavar="URI", help="MLflow tracking store holding the runs: sqlite:///PATH, "
              "http://HOST:PORT or a directory. Default: sqlite:///mlflow.db in this directory.")
@click.option("--experiment", help="MLflow experiment of the study. Default: the roadmap's name (as run_ablation.py "
              "names it).")
@click.option("--roadmap", "roadmap_name", metavar="NAME", help=f"Roadmap whose steps are drawn (a folder under "
              f"steps/). Default: the roadmap named in --csv, else {DEFAULT_ROADMAP}.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Draw a saved summary "
              "(results/<experiment>/roadmap.csv, written by run_ablation.py) instead of reading MLflow.")
@click.option("--paper", is_flag=True, help="Draw the paper's own numbers (Table 10 or 11, from the step files); "
              "needs no runs. Accuracy vs throughput is skipped: the paper measured no per-step speed.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Folder for the figures. "
              "Default: results/<experiment>/; with --csv the CSV's folder; with --paper results/paper/<roadmap>/.")
@click.option("--format", "formats", default="png,svg", show_default=True, help="Comma-separated file formats, "
              "one file per figure each: png, svg, pdf (e.g. png,pdf).")
@click.option("--dpi", type=click.IntRange(min=30, max=1200), default=200, show_default=True,
              help="Resolution of PNG files (dots per inch); SVG and PDF are vector files.")
@click.option("--study-run", metavar="RUN_ID", help="From MLflow: the parent run of the study to draw. Default: the "
              "newest study of the experiment (each study's own runs only: its plan's configurations and seeds).")
@click.option("--report", type=click.Choice(["last", "best"]), default=None,
              help="From MLflow: draw the last epoch's top-1 or the best epoch's. Default: what the study reported "
              "(a CSV says which it holds).")
@click.option("--steps-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder holding the roadmaps (default: the roadmaps this project ships).")
def main(tracking_uri: str | None, experiment: str | None, roadmap_name: str | None, csv_path: Path | None,
         paper: bool, out_dir: Path | None, formats: str, dpi: int, study_run: str | None, report: str | None,
         steps_dir: Path | None) -> int:
    """Draw the modernization roadmap as in the paper's Figure 2, plus accuracy vs GMACs and vs throughput.

    Reads the study's runs from MLflow (or a saved roadmap.csv, or only the paper's numbers) and writes
    roadmap.<fmt>, accuracy_vs_gmacs.<fmt> and, when the runs measured throughput, accuracy_vs_throughput.<fmt>,
    printing one line per file. GFLOPs/GMACs are G multiply-accumulates of conv and linear layers.
    run_ablation.py draws the same figures at the end of every study; this redraws them. Installed as
    `plot-roadmap`.

    \b
    Examples:
      python plot_roadmap.py --paper --out docs                   # the paper's Figure 2 / Table 10
      python plot_roadmap.py                                      # experiment resnet50_to_convnext_t in ./mlflow.db
      python plot_roadmap.py --csv results/resnet50_to_convnext_t/roadmap.csv --format png,pdf
    """
    from ..report import plot, plot_data  # matplotlib loads only once the options are known to be valid

    file_formats = _parse_formats(formats)
    if paper and csv_path is not None:
        raise click.UsageError("--paper and --csv exclude each other; pass one of them")
    if csv_path is not None:
        from ..report.report_summary import read_report_csv

        summary = read_report_csv(csv_path)
        info = RoadmapInfo.of(load_roadmap(roadmap_name or _csv_roadmap(summary) or DEFAULT_ROADMAP, steps_dir))
        out = out_dir or csv_path.parent
    elif paper:
        roadmap = load_roadmap(roadmap_name or DEFAULT_ROADMAP, steps_dir)
        info = RoadmapInfo.of(roadmap)
        summary = plot_data.paper_summary(info)
        out = out_dir or Path("results") / "paper" / roadmap.name
    else:
        experiment = experiment or roadmap_name or DEFAULT_ROADMAP
        summary, info, study = _tracked_summary(tracking_uri, experiment, study_run, report)
        click.echo(f"drawing {study.describe()}")
        out = out_dir or Path("results") / experiment / ("" if study.plan.ablation == "cumulative"
                                                          else str(study.plan.ablation))

    for stem, paths, why_not in plot.draw_figures(summary, info, out, file_formats, dpi=dpi):
        if not paths:
            click.echo(f"skipped {stem}: {why_not}")
        for path in paths:
            click.echo(f"wrote {path}")
    return 0


def _parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for fmt in formats:
        if fmt not in FORMAT_CHOICES:
            raise click.BadParameter(f"{fmt!r} is not a figure format; valid: {', '.join(FORMAT_CHOICES)}",
                                     param_hint="--format")
    if not formats or len(set(formats)) != len(formats):
        raise click.BadParameter(f"{text!r} is not valid; write distinct formats separated by commas, e.g. png,svg",
                                 param_hint="--format")
    return formats


def _csv_roadmap(summary) -> str | None:
    """The roadmap a saved summary was made for, when it names exactly one."""
    names = {str(name) for name in summary["roadmap"] if str(name)}
    return names.pop() if len(names) == 1 else None


def _tracked_summary(tracking_uri: str | None, experiment: str, study_run: str | None, report: str | None):
    """(summary, RoadmapInfo, TrackedStudy) of one study of the experiment, read from MLflow."""
    # MLflow is imported only on this path: --csv and --paper never pay for it.
    import dataclasses

    from ..report.report_summary import report_summary
    from ..report.studies import find_study
    from ..tracking import DEFAULT_TRACKING_URI, experiment_exists

    if not experiment_exists(tracking_uri, experiment):
        raise click.UsageError(
            f"experiment {experiment!r} not found in {tracking_uri or DEFAULT_TRACKING_URI}; run run_ablation.py "
            "first, pass --experiment NAME or --tracking-uri URI, or draw from --csv PATH or --paper"
        )
    study = find_study(tracking_uri, experiment, study_run)
    plan = dataclasses.replace(study.plan, report=report) if report else study.plan
    return report_summary(tracking_uri, experiment, plan), plan.roadmap, study  # as the study's end drew it


if __name__ == "__main__":
    main()
