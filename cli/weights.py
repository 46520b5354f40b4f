"""`cqd-port convert-weights` and `cqd-port inspect`: MatConvNet model files.

Thin: parses options, calls `matconvnet_weights`, prints. User errors are
`CqdError`, which `cli/main.py` prints as one line with exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from matconvnet_weights.convert import MODEL_NAMES, convert_weights, layer_table, read_any, summary


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)  # piped: do not squeeze the table
    return console


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def table_view(network: Any) -> Table:
    """The layer table as a rich Table (output shapes for one image of the model's imageSize)."""
    layers = layer_table(network)
    c, h, w = layers.input_shape
    table = Table(title=f"{len(layers.rows)} layers, input {c}x{h}x{w} (C x H x W)")
    for column, justify in (("#", "right"), ("layer", "left"), ("type", "left"), ("output C x H x W", "right"),
                            ("parameters", "left"), ("count", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for index, row in enumerate(layers.rows, start=1):
        params = ", ".join(f"{key} {_shape(shape)}" for key, shape in row.param_shapes.items())
        table.add_row(str(index), row.name, row.type, _shape(row.output_shape), params,
                      f"{row.param_count:,}" if row.param_count else "")
    table.add_section()
    table.add_row("", "total", "", "", "", f"{layers.total_params:,}")
    return table


def summary_lines(network: Any) -> list[str]:
    info = summary(network)
    lines = [
        f"layout: {info['layout']}",
        f"image size: {_shape(tuple(info['image_size'])) if info['image_size'] else 'not given'}",
        f"average image: {_shape(tuple(info['average_image'])) if info['average_image'] else 'none'}",
        f"classes: {info['classes']}",
    ]
    if info["interpolation"]:
        lines.append(f"interpolation: {info['interpolation']}")
    lines.extend(f"note: {note}" for note in info["notes"])
    return lines


def convert_weights_cmd(
    mat_file: Path = typer.Argument(..., metavar="FILE.mat", help="A MatConvNet model (SimpleNN or DagNN; MAT v5/v7/v7.3)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Checkpoint to write (default: FILE.pt)."),
    model: Optional[str] = typer.Option(None, "--model", help=f"Check the topology: {' | '.join(MODEL_NAMES)}."),
) -> None:
    """Convert a MatConvNet model file to a cqd-port checkpoint (.pt) and print its layers."""
    console = _console()

    def show(network: Any) -> None:
        console.print(table_view(network))
        for line in summary_lines(network):
            console.print(line, highlight=False)

    with _console(stderr=True).status(f"reading {mat_file}..."):
        written = convert_weights(mat_file, output, expect=model, on_read=show)
    console.print(f"wrote {written}", highlight=False)


def inspect_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="A MatConvNet .mat model or a converted .pt checkpoint."),
) -> None:
    """Print the layer table and meta summary of a .mat model or a converted checkpoint."""
    console = _console()
    with _console(stderr=True).status(f"reading {file}..."):
        network = read_any(file)
    console.print(table_view(network))
    for line in summary_lines(network):
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("convert-weights")(convert_weights_cmd)
    app.command("inspect")(inspect_cmd)
