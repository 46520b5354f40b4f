"""Issue 17 in the experiments layer: locks, run states on errors and Ctrl-C, paths inside their roots, strict YAML options."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import torch
import yaml

from cqd_port.errors import CqdError
from cqd_port.experiments.custom import parse_config, run_custom
from cqd_port.experiments.runfolder import RunFolder, RunLock
from cqd_port.train.checkpoint import TrainingCheckpoint, save_training_checkpoint
from test_custom_train import BLUR, folder  # noqa: F401  (folder: the shared 3-class ImageFolder fixture)


def tiny(folder, out, method="B", **data) -> dict:
    return {
        "method": method,
        "out": str(out),
        "data": {"root": str(folder), "size": 32, "prepared": str(out.parent / "prepared"), "degradation": BLUR, "parameters": {"sigma": 1.5}, **data},
        "teacher": {"arch": "mobilenet_v3_small", "weights": "random", "input_size": 32},
        "train": {"epochs": 1, "batch_size": 5, "schedule": [0.01], "device": "cpu"},
    }


@pytest.fixture
def alarm():
    """Fail instead of spinning: a lock loop that never ends raises after a few seconds."""

    def on_alarm(signum, frame):
        raise TimeoutError("still waiting after 10 s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- the lock


def test_the_lock_refuses_a_file_proc_a_dangling_link_and_a_folder_with_one_line(tmp_path, alarm):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        a_file / ".lock": "is a file, not a folder",
        tmp_path / "a-file" / "sub" / ".lock": "is a file, not a folder",
        tmp_path / "dangling" / ".lock": "is a symbolic link",
        tmp_path / "folder" / ".lock": "is a folder, not a lock file",
    }
    (tmp_path / "dangling").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling" / ".lock")
    (tmp_path / "folder" / ".lock").mkdir(parents=True)
    for path, message in cases.items():
        with pytest.raises(CqdError, match=message) as info:
            RunLock(path, say=lambda _m: None).acquire()
        assert "\n" not in str(info.value)
    with pytest.raises(CqdError, match="not writable|cannot write") as info:
        RunLock(__import__("pathlib").Path("/proc/cqd-port-out/.lock"), say=lambda _m: None).acquire()
    assert not os.path.exists(tmp_path / "nowhere")


def test_train_and_reproduce_with_out_a_file_exit_2_with_one_line(cli, folder, tmp_path, alarm):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny(folder, a_file)))
    result = cli("train", config)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "taken is a file" in result.stderr, result.stderr
    config.write_text(yaml.safe_dump(tiny(folder, tmp_path / "proc-out") | {"out": "/proc/cqd-port-out"}))
    result = cli("train", config)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "/proc/cqd-port-out" in result.stderr, result.stderr


def test_claiming_a_run_folder_removes_temporaries_of_killed_writers(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    dead = folder.path / f".checkpoint.pt.{2**22 + 7}@{socket.gethostname().split('.')[0]}.abcd1234.tmp.pt"
    other_host = folder.path / ".checkpoint.pt.12@other-node.abcd1234.tmp.pt"
    kept = folder.path / "checkpoint.pt"
    for path in (dead, other_host, kept):
        path.write_bytes(b"0" * 100)
    with folder.claim({"x": 1}, say=lambda _m: None):
        pass
    assert not dead.exists() and not other_host.exists() and kept.exists()


# --------------------------------------------------------------------------- run states


def test_ctrl_c_exits_130_with_one_line_saying_how_to_resume(cli, folder, tmp_path, monkeypatch):
    import cqd_port.experiments.custom as custom

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(custom, "run_custom", interrupted)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny(folder, tmp_path / "out")))
    result = cli("train", config)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == ["interrupted; run the same command again to resume (finished epochs and runs are kept)"]


def test_an_interrupted_run_is_recorded_and_the_dry_run_says_where_it_resumes(tmp_path):
    from cqd_port.experiments.dryrun import status_text

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.mark_running({"key": "run"})
    (folder.path / "history.json").write_text(json.dumps([{}, {}, {}]))  # epoch 3 ran, but was not checkpointed
    folder.mark_interrupted()
    assert folder.status() == "interrupted"
    assert status_text(folder) == "interrupted, resumes at epoch 1"  # no checkpoint: from the start
    save_training_checkpoint(folder.path / "checkpoint.pt", TrainingCheckpoint(2, {"w": torch.zeros(3)}, {}, [{}, {}], {}))
    assert status_text(folder) == "interrupted, resumes at epoch 3"  # the checkpoint's epoch + 1
    (folder.path / "checkpoint.pt").write_bytes(b"truncated")
    assert status_text(folder) == "interrupted, resumes at epoch 1"


# --------------------------------------------------------------------------- checks before any data, paths inside their roots


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.seed", -1, r"train.seed"),
        ("train.seed", 10**20, r"train.seed"),
        ("data.seed", 2**32, r"data.seed"),
        ("data.split_seed", -5, r"data.split_seed"),
        ("train.momentum", -1, r"train.momentum: -1.0 must be a finite number >= 0"),
        ("train.weight_decay", -1, r"train.weight_decay"),
        ("train.epochs", 10**20, r"train.epochs"),
        ("data.size", 10**9, r"data.size"),
        ("data.name", "../../../x", r"data.name: '../../../x' must be a plain folder name"),
    ],
)
def test_config_values_are_checked_before_any_data_is_prepared(folder, tmp_path, key, value, message):
    data = tiny(folder, tmp_path / "out")
    section, name = key.split(".")
    data[section][name] = value
    with pytest.raises(CqdError, match=message) as info:
        parse_config(data)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "out").exists()


def test_set_values_are_read_strictly(folder, tmp_path):
    for assignment, message in (
        ("data.parameters={a: 1, a: 2}", "duplicate key"),
        ("data.parameters=&x {a: *x}", "alias|anchor"),
    ):
        with pytest.raises(CqdError, match=message):
            parse_config(tiny(folder, tmp_path / "out"), [assignment])


def test_evaluate_refuses_name_escapes_and_names_the_methods_the_folder_has(cli, folder, tmp_path):
    out = tmp_path / "out"
    run_custom(parse_config(tiny(folder, out)), progress=False)
    outside = tmp_path / "escaped"
    result = cli("evaluate", out, "--data", folder, "--name", f"../{outside.name}")
    assert result.exit_code == 2 and "--name: '../escaped' must be a plain folder name" in result.stderr, result.stderr
    assert not outside.exists() and not (tmp_path / "prepared" / ".." / "escaped").exists()
    result = cli("evaluate", out, "--param", "sigma=&x [*x]")
    assert result.exit_code == 2 and "--param sigma" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = cli("evaluate", out, "--method", "A+B")
    assert result.exit_code == 2, result.stderr
    assert "holds no A+B run" in result.stderr and "it has B" in result.stderr, result.stderr


def test_report_on_a_train_folder_says_what_it_draws_and_where_the_results_are(cli, tmp_path):
    (tmp_path / "config.yaml").write_text("method: CQD\n")
    result = cli("report", tmp_path)
    assert result.exit_code == 2 and "is a `cqd-port train` / `demo --custom` folder" in result.stderr, result.stderr
    assert "results.md" in result.stderr and len(result.stderr.strip().splitlines()) == 1
