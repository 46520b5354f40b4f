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
