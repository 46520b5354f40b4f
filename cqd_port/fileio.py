"""Atomic writes: every file a command writes goes through here.

A file is written to a temporary sibling, flushed, then renamed over the
target, so an interrupted run never leaves a half-written file behind.
A full disk (ENOSPC, or a quota: EDQUOT) becomes one `CqdError` line naming
the target, the free space and the space needed, with the temporary file
removed; writers that know their size up front (`expected_bytes`) are
refused before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cqd_port.errors import CqdError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def disk_full_error(target: Path, needed: int | None, written: int | None = None) -> CqdError:
    """The one-line message for a write that ran out of space."""
    free = free_bytes(target.parent)
    what = f"needs about {human_bytes(needed)}" if needed else (
        f"needs more than the {human_bytes(written)} written before the disk filled" if written else "needs more space"
    )
    have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    return CqdError(f"{target}: disk full: writing it {what}, the device has {have}; free some space or choose another output path")


def check_free_space(target: str | os.PathLike[str], needed: int) -> None:
    """Refuse, before writing, a file of `needed` bytes that cannot fit where `target` goes."""
    target = Path(target)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = free_bytes(folder)
    if free is not None and needed > free:
        raise disk_full_error(target, needed)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` on success.

    The temporary file keeps the target's suffix, so writers that dispatch on
    the extension (matplotlib, cv2.imwrite) still work. On any exception the
    temporary file is removed and the target is left untouched; a full disk
    raises `CqdError` (see the module docstring). `expected_bytes`, when the
    writer knows it, is checked against the free space first.
    """
    target = Path(target)
    if expected_bytes:
        check_free_space(target, expected_bytes)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        written = tmp.stat().st_size if tmp.exists() else None
        tmp.unlink(missing_ok=True)
        if exc.errno in _DISK_FULL:
            raise disk_full_error(target, expected_bytes, written) from None
        raise
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else None
        tmp.unlink(missing_ok=True)
        # Some writers (torch.save's zip writer) turn ENOSPC into a RuntimeError: tell it by the free space left.
        if isinstance(exc, RuntimeError) and _looks_full(target, expected_bytes, written):
            raise disk_full_error(target, expected_bytes, written) from None
        raise


def _looks_full(target: Path, expected_bytes: int | None, written: int | None) -> bool:
    free = free_bytes(target.parent)
    if free is None:
        return False
    needed = max(expected_bytes or 0, written or 0)
    return free < max(needed, 64 * 1024)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target, expected_bytes=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(target: str | os.PathLike[str], obj: Any) -> None:
    import torch

    with atomic_path(target, expected_bytes=tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)


def tensor_bytes(obj: Any) -> int:
    """The bytes of tensor data in a (nested) checkpoint: a lower bound of its file size."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0
