"""The Typer app behind the `cqd-port` console script.

Each command group lives in its own module with a `register(app)` function;
this module only assembles them and turns user errors (`CqdError`) into one
line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

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


class PlainHelpCommand(TyperCommand):
    """A command whose help shows values as a user types them.

    Typer writes a required argument as `{FILE.mat}` in the usage line and a
    repeatable option as `--param <list[str]>` (Python's type, not what goes
    on the command line). Here: `cqd-port convert-weights [OPTIONS] FILE.mat`
    and `--param <str>` (the help says it is repeatable).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperOption) and param.multiple and param.metavar is None:
                element = re.sub(r"^list\[(.*)\]$", r"\1", param.bare_type()).lower()
                param.metavar = f"<{element}>"

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


def _plain_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = PlainHelpCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _plain_help(group.typer_instance)


def _register_commands() -> None:
    import importlib

    for module_name in ("cqd_port_cli.weights", "cqd_port_cli.parity_cmd", "cqd_port_cli.data_cmd", "cqd_port_cli.train_cmd", "cqd_port_cli.custom_cmd", "cqd_port_cli.analysis_cmd"):
        importlib.import_module(module_name).register(app)
    _plain_help(app)


_register_commands()


def main() -> None:
    try:
        app()
    except CqdError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == 130:  # Typer's exit on Ctrl-C (KeyboardInterrupt); the run folders say 'interrupted'
            typer.echo("interrupted; run the same command again to resume (finished epochs and runs are kept)", err=True)
        raise


if __name__ == "__main__":
    main()
