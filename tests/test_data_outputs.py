"""What a new user hit with synth / prepare / gallery: stale outputs and bad --out paths (issue 12, items 1 and 3)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from cqd_port.data.cub import read_cub
from cqd_port.data.degrade import DegradationConfig
from cqd_port.data.prepare import prepare_dataset, read_prepared
from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.errors import CqdError

SMALL = DegradationConfig(out_size=32, lowres_size=8)
SYNTH = dict(train_per_class=2, test_per_class=1, size=32)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_prepare_rebuilds_when_the_sources_change_in_place(tmp_path, capsys):
    from cqd_port.data.prepare import prepared_fingerprint

    data = make_synthetic_dataset(tmp_path / "sb", classes=3, seed=0, **SYNTH)
    target = prepare_dataset("cub", "lowres", data, tmp_path / "prep", config=SMALL, progress=False)
    first = read_prepared(target)
    assert len(first.records) == 9 and first.num_classes == 3
    fingerprint = prepared_fingerprint(target)
    assert fingerprint == json.loads((target / "manifest.json").read_text())["fingerprint"]

    # the same command, the dataset regenerated in place with fewer classes and images
    make_synthetic_dataset(tmp_path / "sb", classes=2, seed=1, train_per_class=1, test_per_class=1, size=32)
    assert len(list((tmp_path / "sb" / "images").iterdir())) == 2  # synth left no stale class folder
    capsys.readouterr()
    prepare_dataset("cub", "lowres", data, tmp_path / "prep", config=SMALL, progress=False)
    notice = capsys.readouterr().err
    assert "rebuilding" in notice and str(target) in notice and len(notice.strip().splitlines()) == 1
    second = read_prepared(target)
    assert len(second.records) == 4 and second.num_classes == 2
    assert prepared_fingerprint(target) != fingerprint
    # no JPEG of the old dataset is left behind
    listed = {r.path for r in second.records}
    assert {p for p in _files(target) if p.endswith(".jpg")} == listed


def test_fingerprint_follows_sizes_mtimes_list_and_settings(tmp_path):
    from cqd_port.data.prepare import source_fingerprint

    data = make_synthetic_dataset(tmp_path / "d", classes=2, **SYNTH)
    index = read_cub(data)
    base = source_fingerprint(index, SMALL.as_dict())
    assert base == source_fingerprint(read_cub(data), SMALL.as_dict())  # deterministic
    assert base != source_fingerprint(index, DegradationConfig(out_size=32, lowres_size=9).as_dict())
    image = index.resolve(index.records[0])
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert base != source_fingerprint(index, SMALL.as_dict())


def test_synth_refuses_a_folder_with_images_it_did_not_draw(tmp_path):
    root = tmp_path / "cub"
    (root / "images" / "001.Black_footed_Albatross").mkdir(parents=True)
    (root / "images" / "001.Black_footed_Albatross" / "a.jpg").write_bytes(b"real data")
    with pytest.raises(CqdError, match="did not draw"):
        make_synthetic_dataset(root, classes=2, **SYNTH)
    assert (root / "images" / "001.Black_footed_Albatross" / "a.jpg").read_bytes() == b"real data"


# ----------------------------------------------------------------------------- item 3: --out paths


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("s") / "birds", classes=2, **SYNTH)


def _one_line_exit_2(result):
    assert result.exit_code == 2, result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_synth_and_prepare_out_is_a_file(tmp_path, birds, cli):
    (tmp_path / "f.txt").write_text("keep")
    result = cli("synth", "--out", tmp_path / "f.txt", "--classes", "2", "--train-per-class", "1", "--test-per-class", "0", "--size", "32")
    _one_line_exit_2(result)
    assert "f.txt" in result.stderr and "not a folder" in result.stderr
    result = cli("prepare", "--dataset", "cub", "--degradation", "lowres", "--data-root", birds, "--out", tmp_path / "f.txt", "--no-progress")
    _one_line_exit_2(result)
    assert "f.txt" in result.stderr
    assert (tmp_path / "f.txt").read_text() == "keep" and _files(tmp_path) == ["f.txt"]


def test_gallery_out_checked_before_rendering(tmp_path, birds, cli, monkeypatch):
    import cqd_port.data.degrade as degrade

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered before checking --out")

    monkeypatch.setattr(degrade, "degrade_from_source", no_rendering)
    (tmp_path / "existing_dir").mkdir()
    result = cli("gallery", "--data-root", birds, "--out", tmp_path / "existing_dir")
    _one_line_exit_2(result)
    assert "existing folder" in result.stderr
    (tmp_path / "f.txt").write_text("keep")
    result = cli("gallery", "--data-root", birds, "--out", tmp_path / "f.txt" / "x.png")
    _one_line_exit_2(result)
    assert "f.txt is a file, not a folder" in result.stderr
    assert _files(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("command", ["synth", "prepare", "gallery"])
def test_read_only_out_folder(tmp_path, birds, cli, monkeypatch, command):
    # A read-only folder, simulated (tests may run as root): the folder refuses new files.
    import cqd_port.fileio as fileio

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(fileio.os, "access", lambda p, mode, **k: False if mode & os.W_OK and str(p).startswith(str(ro)) else real_access(p, mode, **k))

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    args = {
        "synth": ("synth", "--out", ro, "--classes", "2", "--train-per-class", "1", "--test-per-class", "0", "--size", "32"),
        "prepare": ("prepare", "--dataset", "cub", "--degradation", "lowres", "--data-root", birds, "--out", ro, "--no-progress"),
        "gallery": ("gallery", "--data-root", birds, "--out", ro / "g.png"),
    }[command]
    result = cli(*args)
    _one_line_exit_2(result)
    assert "not writable" in result.stderr and str(ro) in result.stderr
    assert _files(ro) == []


def test_reproduce_notices_changed_sources_too(tmp_path):
    from cqd_port.experiments.settings import GridConfig
    from cqd_port.experiments.tasks import DataVariant

    data = make_synthetic_dataset(tmp_path / "raw", classes=3, seed=0, **SYNTH)
    config = GridConfig(out=tmp_path / "runs", prepared=tmp_path / "prep", cub_root=data, progress=False, prepare_config=SMALL.as_dict())
    variant = DataVariant("cub", "gray")
    folder = config.catalog().ensure(variant)
    manifest = (folder / "manifest.json").stat().st_mtime_ns
    assert config.catalog().ensure(variant) == folder and (folder / "manifest.json").stat().st_mtime_ns == manifest  # current: untouched
    make_synthetic_dataset(tmp_path / "raw", classes=2, seed=1, train_per_class=1, test_per_class=1, size=32)
    assert len(read_prepared(config.catalog().ensure(variant)).records) == 4
