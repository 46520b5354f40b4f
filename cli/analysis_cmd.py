"""`cqd-port analyze gradients` (the paper's Figure 4) and `cqd-port report` (figures from results.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _analyze_gradients(
    model_b: Path = typer.Option(..., "--model-b", help="Run folder (holding final.pt) or checkpoint of the model trained on B."),
    model_cqd: Path = typer.Option(..., "--model-cqd", help="Run folder or checkpoint of the CQD model."),
    data_root: Path = typer.Option(
        ..., "--data-root", help="CUB_200_2011 root or a prepared variant folder with boxes (the localization task's full images)."
    ),
    n: int = typer.Option(1000, "--n", help="Number of test images (drawn with --seed; all when fewer)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder for tau.csv and the figures (default: analysis-gradients inside the --model-cqd run folder; outputs go with the results they are made from)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the image draw."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward/backward pass."),
    panel: int = typer.Option(4, "--panel", help="Images in the gradient-map panel (spread over tau_CQD - tau_B)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Gradient maps and the localization score tau of a B model and a CQD model (paper Section 5, Figure 4)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cqd_port.analysis.tau import TauStudyConfig, run_tau_study

    config = TauStudyConfig(
        model_b=model_b, model_cqd=model_cqd, data_root=data_root, out=out, n=n, seed=seed,
        batch_size=batch_size, panel_images=panel, device=device,
    )
    names = {"b": "B model", "cqd": "CQD model"}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(tag: str, advance: int, total: int) -> None:
            if tag not in tasks:
                tasks[tag] = bar.add_task(f"gradients, {names[tag]}", total=total)
            bar.advance(tasks[tag], advance)

        result = run_tau_study(config, progress=progress)
    for line in result.summary_lines():
        typer.echo(line)
    typer.echo(f"wrote {result.csv_path}, {result.scatter_path}, {result.panel_path}")


def _report(
    results_dir: Path = typer.Argument(..., help="Folder holding results.json (from `reproduce` or `demo`) and the run folders."),
    task: Optional[str] = typer.Option(None, "--task", help="Training curves for this task only (default: every task with histories)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder (default: RESULTS_DIR/figures; outputs go with the results they are made from)."
    ),
) -> None:
    """Bar chart of the Table 1/2 cells against the paper, and training curves per task."""
    from cqd_port.analysis.report import ReportConfig, make_report

    result = make_report(ReportConfig(results_dir=results_dir, out=out, task=task))
    typer.echo(f"wrote {result.bars_path}")
    for task_name, path in result.curve_paths.items():
        typer.echo(f"wrote {path} (training curves, {task_name})")
    if result.missing_histories:
        typer.echo(f"no training curves (evaluation-only runs, or runs not finished): {', '.join(result.missing_histories)}")


def register(app: typer.Typer) -> None:
    analyze = typer.Typer(help="Why CQD works: gradient maps and tau (paper Section 5).", no_args_is_help=True, rich_markup_mode=None)
    analyze.command("gradients")(_analyze_gradients)
    app.add_typer(analyze, name="analyze")
    app.command("report")(_report)
