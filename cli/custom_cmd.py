"""`cqd-port train CONFIG.yaml` and `cqd-port evaluate RUN`: one run on your own data (cqd_port.experiments.custom)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cqd_port.errors import CqdError


def _parameters(values: Optional[list[str]]) -> dict:
    """`--param sigma=2 --param jitter=0.5` -> {"sigma": 2, "jitter": 0.5} (values parsed as YAML)."""
    from cqd_port.yamlio import load_yaml_text

    out: dict = {}
    for item in values or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CqdError(f"--param {item}: write it as name=value, e.g. --param sigma=2.0")
        out[key.strip()] = load_yaml_text(text, f"--param {key.strip()}")
    return out


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: Optional[Path] = typer.Argument(None, help="The run's YAML file (template: cqd-port train --example)."),
        overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a key, e.g. --set train.epochs=5 (repeatable)."),
        example: bool = typer.Option(False, "--example", help="Print a commented template configuration and stop."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
        rerun: bool = typer.Option(False, "--rerun", help="Retrain runs whose folder holds a run made with other settings or data (instead of stopping)."),
    ) -> None:
        """One run of any method (A, B, A+B, A,B, CQD, A-CQD) on your data, degradation and networks. Resumes."""
        from cqd_port.experiments.custom import EXAMPLE_CONFIG, load_config, run_custom

        if example:
            typer.echo(EXAMPLE_CONFIG, nl=False)
            return
        if config is None:
            raise CqdError("give the run's CONFIG.yaml (write one with `cqd-port train --example > run.yaml`)")
        outcome = run_custom(load_config(config, overrides or []), progress=progress, rerun=rerun)
        for key, record in outcome.records.items():
            accuracy = record.get("accuracy")
            typer.echo(f"{key}: test accuracy {accuracy:.2f}%" if accuracy is not None else f"{key}: {record.get('status')}")
        typer.echo(f"run folder: {outcome.out} (config.yaml, description.txt)")

    @app.command("evaluate")
    def evaluate(
        run: Path = typer.Argument(..., help="The out folder of a finished `cqd-port train` run."),
        data: Optional[Path] = typer.Option(None, "--data", help="Another dataset (default: the run's own)."),
        data_format: str = typer.Option("folder", "--format", help="Format of --data: folder, cub or cars."),
        name: Optional[str] = typer.Option(None, "--name", help="Name of --data in the prepared store (default: its folder name)."),
        degradation: Optional[str] = typer.Option(None, "--degradation", help="Built-in name or package.module:function (default: the run's test domain)."),
        param: Optional[list[str]] = typer.Option(None, "--param", help="Plugin parameter name=value (repeatable)."),
        split: str = typer.Option("test", "--split", help="test (the dataset's test split) or all."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        method: Optional[str] = typer.Option(None, "--method", help="Which method's model when the folder holds several (default: the last trained)."),
    ) -> None:
        """Score a finished run's model on any dataset and degradation."""
        from cqd_port.experiments.custom import evaluate_run

        summary, path = evaluate_run(run, data, data_format, degradation, _parameters(param), split, name, device, method=method)
        typer.echo(
            f"{summary['model']} on {summary['data']} ({summary['split']}, {summary['images']} images): "
            f"accuracy {summary['accuracy']:.2f}%, mean per-class {summary['mean_class_accuracy']:.2f}%"
        )
        typer.echo(f"wrote {path}")
