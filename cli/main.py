"""The Typer app behind the `cqd-port` console script.

Each command group lives in its own module with a `register(app)` function;
this module only assembles them and turns user errors (`CqdError`) into one
line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from cqd_port.errors import CqdError

app = typer.Typer(
    name="cqd-port",
    help="Cross Quality Distillation (Su & Maji, BMVC 2017), MatConvNet-faithful, in PyTorch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help: flags without a `<bool>` value, long words wrapped rather than cut at the terminal width.
    rich_markup_mode=None,
)


def _register_commands() -> None:
    import importlib

    for module_name in ("cqd_port_cli.weights", "cqd_port_cli.parity_cmd", "cqd_port_cli.data_cmd", "cqd_port_cli.train_cmd", "cqd_port_cli.custom_cmd", "cqd_port_cli.analysis_cmd"):
        importlib.import_module(module_name).register(app)


_register_commands()


def main() -> None:
    try:
        app()
    except CqdError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
