"""The run folder's life (`cqd_port.experiments.runfolder`): the one identity guard and the run.json states."""

from __future__ import annotations

import json

import pytest

from cqd_port.errors import CqdError
from cqd_port.experiments.runfolder import DISK_FULL, FINISHED, RunFolder, is_failed

JOB = {"method": "cqd", "epochs": 2, "data": [["cub/lowres", "abc"]]}


def _attempt(folder: RunFolder, job: dict, rerun: bool = False, messages: list | None = None):
    with folder.claim(job, rerun, say=(messages if messages is not None else []).append) as reused:
        return reused


def test_a_finished_run_is_reused_only_with_the_same_identity(tmp_path):
    folder = RunFolder(tmp_path / "res_cub" / "cqd")
    assert _attempt(folder, JOB) is None  # a new folder: the attempt goes ahead
    assert json.loads((folder.path / "identity.json").read_text())["job"] == JOB
    folder.mark_running({"key": "res_cub/cqd"})
    folder.mark_finished({**folder.record(), "accuracy": 50.0})
    assert _attempt(folder, JOB)["accuracy"] == 50.0  # reused as it is
    changed = {**JOB, "data": [["cub/lowres", "def"]]}
    with pytest.raises(CqdError, match=r"holds a run made with other settings \(data cub/lowres\); use a new --out, or --rerun"):
        _attempt(folder, changed)
    messages: list[str] = []
    assert _attempt(folder, changed, rerun=True, messages=messages) is None
    assert not (folder.path / "run.json").exists() and "--rerun" in messages[0]


def test_an_interrupted_run_with_other_settings_is_refused(tmp_path):
    folder = RunFolder(tmp_path / "run")
    _attempt(folder, JOB)
    folder.mark_running({"key": "run"})
    with pytest.raises(CqdError, match=r"\(epochs\)"):
        _attempt(folder, {**JOB, "epochs": 3})
    assert _attempt(folder, JOB) is None and folder.status() == "running"  # the same settings resume


@pytest.mark.parametrize("end", ["failed", "diverged", "no run.json"])
def test_a_folder_whose_last_attempt_failed_accepts_corrected_settings(tmp_path, end):
    folder = RunFolder(tmp_path / "run")
    _attempt(folder, JOB)
    if end != "no run.json":
        folder.mark_running({"key": "run"})
        (folder.path / "checkpoint.pt").write_bytes(b"x")
        record = folder.mark_failed("Traceback\n  ...\nRuntimeError: weights file missing") if end == "failed" else folder.mark_diverged(3, "nan")
        assert is_failed(record["status"]) and record["status"] != FINISHED
        assert record["status"] in ("failed: RuntimeError: weights file missing", "diverged at epoch 3")
    messages: list[str] = []
    assert _attempt(folder, {**JOB, "epochs": 5}, messages=messages) is None  # corrected: accepted, started afresh
    assert not (folder.path / "checkpoint.pt").exists() and "discarding" in messages[0]


def test_disk_full_is_a_state_that_resumes(tmp_path):
    folder = RunFolder(tmp_path / "run")
    _attempt(folder, JOB)
    folder.mark_running({"key": "run"})
    assert folder.mark_disk_full()["status"] == DISK_FULL == folder.status()
    assert _attempt(folder, JOB) is None  # same settings: resumes
