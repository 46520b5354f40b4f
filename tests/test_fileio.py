"""cqd_port.fileio: atomic writes, and a full disk as one line with nothing left behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_path, atomic_write_bytes


def test_enospc_mid_write_becomes_one_cqd_error_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(CqdError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 5000)  # what the writer managed before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(info.value)
    assert message.startswith(f"{target}: disk full: writing it needs more than the 4.9 KiB written")
    assert "free" in message and "\n" not in message
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_runtime_error_from_a_writer_on_a_full_disk_is_recognised(tmp_path: Path, monkeypatch) -> None:
    # torch.save reports ENOSPC as "RuntimeError: ... file write failed"
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 20, 1 << 20, 0))
    with pytest.raises(CqdError, match="disk full"):
        with atomic_path(tmp_path / "a.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/0: file write failed")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_untouched(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_path(tmp_path / "a.bin"):
            raise RuntimeError("a bug")
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "b.bin"):
            raise PermissionError(errno.EACCES, "denied")
    assert list(tmp_path.iterdir()) == []


def test_known_sizes_are_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 20, 1 << 20, 100))
    with pytest.raises(CqdError, match=r"needs about 1000 bytes, the device has 100 bytes free"):
        atomic_write_bytes(tmp_path / "sub" / "c.bin", b"y" * 1000)
    assert list(tmp_path.iterdir()) == []
