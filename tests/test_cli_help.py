"""Help text: flags look like flags, nothing is cut at 80 columns, every option says what it does (issue 12, item 14)."""

from __future__ import annotations

import pytest
import typer

from cqd_port_cli.main import app


def _commands():
    root = typer.main.get_command(app)
    stack = [((), root)]
    while stack:
        path, command = stack.pop()
        if hasattr(command, "commands"):  # a group
            stack.extend(((*path, name), sub) for name, sub in command.commands.items())
        else:
            yield path, command


COMMANDS = sorted(_commands(), key=lambda item: item[0])


def test_every_option_has_help():
    missing = [
        f"{' '.join(path)} {param.opts[0]}"
        for path, command in COMMANDS
        for param in command.params
        if param.param_type_name == "option" and not (param.help or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_help_at_80_columns(path, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "<bool>" not in text  # a flag takes no value
    assert "…" not in text and "..." not in text.replace("...]", "]")  # nothing cut short
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_help_shows_values_as_typed_not_python_types(path, cli):
    """No `{FILE.mat}` (typer's mark of a required argument) and no `<list[str]>` (a repeatable option's Python type)."""
    text = cli(*path, "--help").stdout
    usage = text.splitlines()[0]
    assert usage.startswith("Usage: ") and f"{' '.join(path)} [OPTIONS]" in usage and "{" not in usage and "}" not in usage
    assert "list[" not in text and "<Path>" not in text


def test_usage_names_arguments_as_typed(cli):
    assert cli("convert-weights", "--help").stdout.splitlines()[0].endswith("cqd-port convert-weights [OPTIONS] FILE.mat")
    assert cli("train", "--help").stdout.splitlines()[0].endswith("cqd-port train [OPTIONS] [CONFIG]")
    assert "--param <str>" in cli("prepare", "--help").stdout


def test_flags_are_flags(cli):
    result = cli("reproduce", "--dry-run", "true")
    assert result.exit_code == 2 and "true" in result.stderr
    help_text = cli("prepare", "--help").stdout
    assert "data/prepared" in help_text  # the one default prepared-data location is stated


@pytest.mark.parametrize(
    "option, value, message",
    [("--average-image", "mean", "--average-image mean: use stored (the release) or colour"), ("--domain-a", "jpeg", "--domain-a jpeg: use native (the release) or prepared")],
)
def test_reproduce_refuses_unknown_release_choices_in_one_line(tmp_path, option, value, message):
    from conftest import run_cli

    result = run_cli("reproduce", "--dry-run", "--out", str(tmp_path / "runs"), option, value)
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {message}"


def test_reproduce_passes_the_release_choices_to_the_grid(tmp_path, monkeypatch):
    from conftest import run_cli

    import cqd_port.experiments.dryrun as dryrun

    seen = {}
    monkeypatch.setattr(dryrun, "describe_plan", lambda plan, config, seeds, select: seen.update(config=config) or ["ok"])
    result = run_cli("reproduce", "--dry-run", "--out", str(tmp_path / "runs"), "--average-image", "colour", "--domain-a", "prepared", "--workers", "3")
    assert result.exit_code == 0, result.stderr
    assert (seen["config"].average_image, seen["config"].domain_a, seen["config"].workers) == ("colour", "prepared", 3)
