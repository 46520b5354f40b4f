"""fileio: a full disk, an unwritable folder, a file in the way -> one CqdError line, no temporary left."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from cqd_port import fileio
from cqd_port.errors import CqdError, DiskFullError
from cqd_port.fileio import atomic_torch_save, atomic_write_bytes, check_output_dir, check_output_file


def _fill_disk_after(monkeypatch, limit: int) -> None:
    """Files opened for writing raise ENOSPC once `limit` bytes went in (a tiny full disk)."""
    import builtins

    real_open = builtins.open

    class FullDiskFile:
        def __init__(self, handle):
            self._handle, self._written = handle, 0

        def write(self, data):
            if self._written + len(data) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            self._written += len(data)
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDiskFile(handle) if "w" in mode else handle

    monkeypatch.setattr(builtins, "open", fake_open)


def test_torch_save_on_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    _fill_disk_after(monkeypatch, 4096)
    with pytest.raises(DiskFullError) as info:
        atomic_torch_save(tmp_path / "a.pt", {"w": torch.zeros(100_000)})
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "a.pt") in message
    assert "390.6 KiB" in message  # the tensor bytes the file needs
    assert list(tmp_path.iterdir()) == []  # no temporary, no target


def test_bytes_on_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(fileio.Path, "write_bytes", lambda self, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(DiskFullError, match="needs about 10.0 KiB"):
        atomic_write_bytes(target, b"0" * 10240)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_other_errors_are_not_called_disk_full(tmp_path):
    with pytest.raises(ValueError):
        with fileio.atomic_path(tmp_path / "a.txt"):
            raise ValueError("not a disk problem")
    assert list(tmp_path.iterdir()) == []


def test_file_in_the_way_of_a_folder(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CqdError, match="f.txt is a file, not a folder"):
        atomic_write_bytes(tmp_path / "f.txt" / "x.png", b"1")
    with pytest.raises(CqdError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f.txt")
    with pytest.raises(CqdError, match="f.txt is a file, not a folder"):
        check_output_file(tmp_path / "f.txt" / "x.png")


def test_folder_where_the_file_should_be(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(CqdError, match="is an existing folder"):
        check_output_file(tmp_path / "d")
    with pytest.raises(CqdError, match="existing folder"):
        atomic_write_bytes(tmp_path / "d", b"1")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and not any((tmp_path / "d").iterdir())


def test_unwritable_folder(tmp_path, monkeypatch):
    # Simulated (tests may run as root, for whom chmod does not bite): mkstemp refused, as in a read-only folder.
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    with pytest.raises(CqdError, match="not writable .permission denied"):
        atomic_write_bytes(tmp_path / "a.txt", b"1")
    monkeypatch.setattr(fileio.os, "access", lambda *a, **k: False)
    with pytest.raises(CqdError, match="not writable"):
        check_output_dir(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(CqdError, match="not writable"):
            atomic_write_bytes(folder / "a.txt", b"1")
        with pytest.raises(CqdError, match="not writable"):
            check_output_dir(folder)
    finally:
        folder.chmod(0o755)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    host = fileio._host()
    dead, alive = _dead_pid(), os.getpid()
    names = {
        "dead": f".checkpoint.pt.{dead}@{host}.abcd1234.tmp.pt",
        "alive": f".checkpoint.pt.{alive}@{host}.abcd1234.tmp.pt",
        "other_host": f".0001.jpg.{dead}@elsewhere-9.abcd1234.tmp.jpg",
        "legacy_old": ".store-0123.npy.k2j3l4m5.tmp.npy",
        "legacy_new": ".0002.jpg.zz9_x8y7.tmp.jpg",
        "not_ours": ".notes.tmp",
        "plain": "checkpoint.pt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    os.utime(tmp_path / names["legacy_old"], (1, 1))  # untouched for decades
    removed = fileio.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["legacy_old"]])
    left = {p.name for p in tmp_path.iterdir()}
    assert names["alive"] in left and names["other_host"] in left and names["legacy_new"] in left
    # a live process's file survives even a lock holder's sweep; the lock holder clears the rest
    removed = fileio.remove_stale_temporaries(tmp_path, lock_held=True)
    assert sorted(p.name for p in removed) == sorted([names["other_host"], names["legacy_new"]])
    assert {p.name for p in tmp_path.iterdir()} == {names["alive"], names["not_ours"], names["plain"]}


def test_stale_temporaries_patterns_and_sub_folders(tmp_path):
    host, dead = fileio._host(), _dead_pid()
    (tmp_path / "cls").mkdir()
    jpg = tmp_path / "cls" / f".a.jpg.{dead}@{host}.abcd1234.tmp.jpg"
    ckpt = tmp_path / f".checkpoint.pt.{dead}@{host}.abcd1234.tmp.pt"
    jpg.write_bytes(b"x")
    ckpt.write_bytes(b"x")
    assert fileio.remove_stale_temporaries(tmp_path, [".*.tmp.jpg"]) == []  # not recursive: the sub-folder is not looked at
    assert fileio.remove_stale_temporaries(tmp_path, [".*.tmp.jpg"], recursive=True) == [jpg]
    assert ckpt.exists()


def test_atomic_path_names_its_temporary_after_the_live_writer(tmp_path):
    with fileio.atomic_path(tmp_path / "a.pt") as tmp:
        tmp.write_bytes(b"x")
        assert f".a.pt.{os.getpid()}@{fileio._host()}." in tmp.name
        assert fileio.remove_stale_temporaries(tmp_path, lock_held=True) == []  # never a live writer's file
    assert (tmp_path / "a.pt").read_bytes() == b"x"


def test_checkpoint_save_and_prepare_remove_a_killed_run_s_leftovers(tmp_path):
    from cqd_port.train.checkpoint import TrainingCheckpoint, save_training_checkpoint

    host, dead = fileio._host(), _dead_pid()
    leftover = tmp_path / f".checkpoint.pt.{dead}@{host}.abcd1234.tmp.pt"
    leftover.write_bytes(b"3.3 MB of a killed run")
    save_training_checkpoint(tmp_path / "checkpoint.pt", TrainingCheckpoint(epoch=1, model={}, optimizer={}, history=[], config={}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
