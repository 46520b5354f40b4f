"""`cqd-port convert-weights` and `cqd-port inspect`: MatConvNet model files.

Thin: parses options, calls `matconvnet_weights`, prints. User errors are
`CqdError`, which `cli/main.py` prints as one line with exit code 2.
"""

from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from matconvnet_weights.convert import (
    MODEL_NAMES,
    TorchvisionCheckpointError,
    convert_weights,
    cut_hint,
    layer_table,
    read_any,
    summary,
)
from matconvnet_weights.export import export_mat


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=160)  # piped: do not squeeze the table
    return console


def _status(message: str):
    """A spinner on a terminal; nothing otherwise (its refresh thread costs ~0.1 s per command)."""
    console = _console(stderr=True)
    return console.status(message) if console.is_terminal else contextlib.nullcontext()


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _printable(text: str) -> str:
    # control characters in a layer name would garble the terminal: show them escaped
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def table_view(network: Any) -> Table:
    """The layer table as a rich Table (output shapes for one image of the model's input size)."""
    layers = layer_table(network)
    c, h, w = layers.input_shape
    source = f"; H x W {layers.input_source}" if layers.input_source else ""
    outputs = f", {_plural(len(layers.outputs), 'output')}" if len(layers.outputs) != 1 or any(r.inputs for r in layers.rows) else ""
    table = Table(title=f"{_plural(len(layers.rows), 'layer')}, input {c}x{h}x{w} (C x H x W{source}){outputs}")
    graph = any(r.inputs for r in layers.rows)
    columns = [("#", "right"), ("layer", "left"), ("type", "left")]
    if graph:
        columns.append(("inputs", "left"))
    columns += [("output C x H x W", "right"), ("parameters", "left"), ("count", "right")]
    for column, justify in columns:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for index, row in enumerate(layers.rows, start=1):
        params = ", ".join(f"{key} {_shape(shape)}" for key, shape in row.param_shapes.items())
        cells = [str(index), _printable(row.name), _printable(row.type)]
        if graph:
            cells.append(_printable(", ".join(row.inputs)))
        cells += [_shape(row.output_shape), params, f"{row.param_count:,}" if row.param_count else ""]
        table.add_row(*cells)
    table.add_section()
    table.add_row("", "total", *([""] * (len(columns) - 3)), f"{layers.total_params:,}")
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
    if info["unknown_layers"]:
        listed = ", ".join(f"'{_printable(n)}' ({_printable(t)})" for n, t in info["unknown_layers"])
        lines.append(f"unknown layer types (convert-weights refuses them): {listed}; {_printable(cut_hint(network))}")
    lines.extend(f"note: {_printable(note)}" for note in info["notes"])
    return lines


def convert_weights_cmd(
    mat_file: Path = typer.Argument(..., metavar="FILE.mat", help="A MatConvNet model (SimpleNN or DagNN; MAT v5/v7/v7.3)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Checkpoint to write (default: FILE.pt)."),
    model: Optional[str] = typer.Option(
        None, "--model", help=f"Check the topology (layer types, kernels, strides, padding; not widths): {' | '.join(MODEL_NAMES)}."
    ),
    cut_at: Optional[str] = typer.Option(None, "--cut-at", metavar="LAYER", help="Keep the network up to this layer (inclusive)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Convert a MatConvNet model file to a cqd-port checkpoint (.pt) and print its layers."""
    console = _console()

    def show(network: Any) -> None:
        console.print(table_view(network))
        for line in summary_lines(network):
            console.print(line, highlight=False, soft_wrap=True)

    notes: list[str] = []
    with _status(f"reading {mat_file}..."):
        written = convert_weights(mat_file, output, expect=model, on_read=show, force=force, cut_at_layer=cut_at, notes=notes)
    for note in notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(f"wrote {written}", highlight=False)


def inspect_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="A MatConvNet .mat model or a converted .pt checkpoint."),
) -> None:
    """Print the layer table and meta summary of a .mat model or a converted checkpoint."""
    console = _console()
    with _status(f"reading {file}..."):
        try:
            network = read_any(file)
        except TorchvisionCheckpointError:
            network = None
    if network is None:
        _inspect_torchvision(console, file)
        return
    console.print(table_view(network))
    for line in summary_lines(network):
        console.print(line, highlight=False, soft_wrap=True)


def _inspect_torchvision(console: Console, file: Path) -> None:
    """A torchvision run's `final.pt`: its architecture, by top-level block, and its preprocessing."""
    from cqd_port.models.torchvision_nets import load_torchvision

    model = load_torchvision(file)
    table = Table(title=f"{model.arch} (torchvision), {model.num_classes} classes, input 3x{model.input_size}x{model.input_size}")
    for column, justify in (("#", "right"), ("block", "left"), ("type", "left"), ("count", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    total = 0
    for index, (name, block) in enumerate(model.backbone.named_children(), start=1):
        count = sum(p.numel() for p in block.parameters())
        total += count
        table.add_row(str(index), name, type(block).__name__, f"{count:,}" if count else "")
    table.add_section()
    table.add_row("", "total", "", f"{total:,}")
    console.print(table)
    meta = model.meta
    console.print("layout: torchvision", highlight=False)
    console.print(f"classifier: {model.head or 'none replaced'}", highlight=False)
    console.print(f"preprocessing: {meta['preprocessing']}", highlight=False, soft_wrap=True)


def export_mat_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="A checkpoint (RUN/final.pt, model.pt) or a MatConvNet .mat model."),
    output: Path = typer.Option(..., "-o", "--output", help="MatConvNet model file to write (net.mat)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Write a network as a MatConvNet model file: SimpleNN (beta18 layout) for chains, DagNN saveobj for graphs."""
    console = _console()
    with _status(f"writing {output}..."):
        written, layout = export_mat(file, output, force=force)
    console.print(f"wrote {written} ({layout})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("convert-weights")(convert_weights_cmd)
    app.command("inspect")(inspect_cmd)
    app.command("export-mat")(export_mat_cmd)
