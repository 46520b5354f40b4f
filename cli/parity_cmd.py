"""`cqd-port parity`: compare the port with MatConvNet's reference numbers.

Thin: parses options, calls `cqd_port_parity.runner.run_parity`, prints the table.
Exit codes: 0 when every comparison passes and nothing was left out, 1 when
one fails (or nothing could be compared), 2 for a user error (missing file or
directory, bad option), 3 when everything that ran passed but a default
reference folder was not found (or a found file was not run): an incomplete
check is never reported as success.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cqd_port_parity.compare import ComparisonRow
from cqd_port_parity.runner import LRN_CHOICES, ParityReport, run_parity


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2e}"


EXIT_INCOMPLETE = 3


def report_table(report: ParityReport) -> Table:
    """The parity table: one row per compared tensor, one per default folder not found."""
    table = Table(title="Parity with MatConvNet and the released CQD code", show_lines=False)
    for column, justify in (("group", "left"), ("case / layer", "left"), ("quantity", "left"),
                            ("max abs error", "right"), ("relative error", "right"),
                            ("tolerance", "right"), ("result", "center"), ("note", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(*_cells(row))
    for folder in report.missing:
        table.add_row(Text(folder.label), "(whole folder)", "", "", "", "", "[bold yellow]NOT RUN[/bold yellow]",
                      Text(folder.message()))  # Text: a path's brackets are not markup
    return table


def _cells(row: ComparisonRow) -> list[str]:
    result = "[green]pass[/green]" if row.passed else "[bold red]FAIL[/bold red]"
    return [row.group, row.case, row.quantity, _fmt(row.max_abs), _fmt(row.rel), f"{row.tol:.0e}", result, row.note]


def parity(
    reference_dir: Optional[list[Path]] = typer.Option(
        None, "--reference-dir", help="Folder of reference .mat files, searched recursively (repeatable); "
        "replaces the defaults: the packaged parity/reference/, ../shared/parity and ../shared/release-parity."),
    model: Optional[Path] = typer.Option(None, "--model", help="A network (.mat or converted .pt) to check against --reference."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="One reference file of any kind (ref_*.mat from export_reference.m, or ops_*, train_*, tps_*, sed_*)."),
    lrn: str = typer.Option("auto", "--lrn", help=f"LRN power function: {' | '.join(LRN_CHOICES)} "
                            "(auto: each file's provenance.lrn)."),
    failures_only: bool = typer.Option(False, "--failures-only", help="Print only the rows that fail."),
) -> None:
    """Compare the port with MatConvNet 1.0-beta18 reference data, operator by operator and layer by layer."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped to a file: do not squeeze the table into 80 columns
    status_console = Console(stderr=True)
    with status_console.status("running the parity suite...") as status:
        report = run_parity(
            reference_dirs=reference_dir or None,
            lrn=lrn,
            model=model,
            reference=reference,
            progress=lambda label: status.update(f"parity: {label}"),
        )
    shown = ParityReport(rows=report.failures(), not_run=report.not_run, missing=report.missing) if failures_only else report
    console.print(report_table(shown))
    if report.lrn_modes:
        console.print("LRN mode:")
        for group, mode in report.lrn_modes.items():
            console.print(f"  {group}: {mode}", markup=False)
    if report.not_run:
        console.print("[yellow]Not run:[/yellow]")
        for item in report.not_run:
            console.print(f"  {item.path}: {item.reason}", markup=False)
    summary = f"{report.n_passed} passed, {report.n_failed} failed"
    if report.not_run:
        summary += f", {len(report.not_run)} not run"
    if not report.rows:
        summary += " (nothing was compared)"
    console.print(summary, markup=False)
    if report.missing:
        console.print("[bold yellow]INCOMPLETE: this was not the whole parity check.[/bold yellow]")
        for folder in report.missing:
            console.print(f"  {folder.message()}", markup=False)
        console.print("  Run from a checkout with ../shared beside it, or pass --reference-dir for each folder.", markup=False)
    if not report.passed:
        raise typer.Exit(1)
    raise typer.Exit(0 if report.complete else EXIT_INCOMPLETE)




def v7_copy(
    model: Path = typer.Argument(..., metavar="MODEL.mat", help="A MatConvNet model file (MAT v7.3 or older)."),
    output: Path = typer.Option(..., "-o", "--output", help="The MAT v7 copy to write (net_v7.mat)."),
    keep_dilate: bool = typer.Option(False, "--keep-dilate", help="Keep dagnn.Conv's 'dilate' (for MatConvNet after beta18)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Write a MAT v7 copy of a model file, which Octave and MatConvNet 1.0-beta18 can load (for export_reference.m)."""
    from cqd_port_parity.mat_v7 import write_v7_copy

    written = write_v7_copy(model, output, keep_dilate=keep_dilate, force=force)
    console = Console()
    for note in written.notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"wrote {written.path} (MAT v7: {', '.join(written.variables)})", markup=False)


def register(app: typer.Typer) -> None:
    app.command("parity")(parity)
    app.command("v7-copy")(v7_copy)
