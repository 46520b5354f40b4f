"""One default prepared-data folder, and hints that are commands that run (issue 12, item 8)."""

from __future__ import annotations

import re
import shlex

import pytest
import typer

from cqd_port_cli.main import app
from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.errors import CqdError
from cqd_port.experiments.settings import GridConfig
from cqd_port.experiments.tasks import DataVariant


def _default(command: str, option: str):
    root = typer.main.get_command(app)
    param = next(p for p in root.commands[command].params if option in p.opts)
    return param.default


def test_prepare_writes_where_reproduce_reads():
    assert str(_default("prepare", "--out")) == str(_default("reproduce", "--prepared")) == str(GridConfig(out=".").prepared)


@pytest.mark.parametrize("variant", [DataVariant("cub", "lowres", "full"), DataVariant("cub", "gray")])
def test_missing_data_hint_is_a_command_that_runs(tmp_path, cli, monkeypatch, variant):
    monkeypatch.chdir(tmp_path)
    raw = make_synthetic_dataset(tmp_path / "raw", classes=2, train_per_class=1, test_per_class=1, size=32)
    config = GridConfig(out=tmp_path / "runs")  # the default --prepared, as `reproduce` without options
    with pytest.raises(CqdError) as info:
        config.catalog().ensure(variant)
    command = re.search(r"`(cqd-port prepare [^`]*)`", str(info.value)).group(1)
    args = [str(raw) if a == "DIR" else a for a in shlex.split(command)[1:]]
    result = cli(*args, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert config.catalog().ensure(variant) == config.catalog().variant_dir(variant)  # reproduce now finds it


def test_network_hint_names_an_existing_command(cli):
    from cqd_port.experiments.networks import _layer_index

    with pytest.raises(CqdError) as info:
        _layer_index([], "fc8", "the classifier", "net.pt")
    command = re.search(r"`cqd-port ([^`]*)`", str(info.value)).group(1).split()
    assert cli(*command[:1], "--help").exit_code == 0
    assert command == ["inspect", "net.pt"]


def test_prepare_workers_default_to_what_the_machine_has(tmp_path, monkeypatch):
    import cqd_port.data.prepare as prepare

    assert _default("prepare", "--workers") is None  # not a fixed number of processes
    monkeypatch.setattr(prepare.os, "sched_getaffinity", lambda pid: {0, 1})
    assert prepare.usable_cpus() == 2
    assert prepare.default_workers(1000) == 2  # a 2-core machine gets 2, not 4
    assert prepare.default_workers(10) == 0  # a tiny job is not worth starting processes
    monkeypatch.setattr(prepare.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert prepare.default_workers(100) == 6

    seen = []

    def spy(jobs, workers, progress, label):
        seen.append((len(jobs), workers))
        raise KeyboardInterrupt  # stop here: only the choice is under test

    monkeypatch.setattr(prepare, "_run", spy)
    monkeypatch.setattr(prepare, "default_workers", lambda n: 3)
    raw = make_synthetic_dataset(tmp_path / "raw", classes=2, train_per_class=1, test_per_class=0, size=32)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_dataset("cub", "gray", raw, tmp_path / "p", progress=False)
    assert seen == [(2, 3)]
