"""Atomic writes: every file a command writes goes through here.

A file is written to a temporary sibling, flushed, then renamed over the
target, so an interrupted run never leaves a half-written file behind.

Writes a user's environment makes impossible (a full disk, a read-only or
permission-less folder, a file where a folder should be, a folder where the
file should be) end in one `CqdError` line naming the path and the fix; the
temporary file is removed first. `check_output_file` / `check_output_dir`
make the same checks up front, before any long work.

A process killed mid-write leaves its temporary behind; the name carries the
writer's pid and host, so `remove_stale_temporaries` can delete the leftovers
of dead writers and never a live writer's file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from cqd_port.errors import CqdError, DiskFullError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def format_bytes(n: float) -> str:
    """`1536` -> `1.5 KiB`: sizes in messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing_ancestor(path)).free
    except OSError:
        return None


def disk_full_error(target: Path, needed: int | None, written: int = 0) -> DiskFullError:
    """The one-line error for a write that ran out of space: the path, the space it needs and what is free.

    `needed` is the file's expected size when known; otherwise the `written`
    bytes that did fit are a lower bound.
    """
    free = _free_bytes(target.parent)
    if needed and needed > written:
        need = f"needs about {format_bytes(needed)}"
    elif written:
        need = f"needs more than the {format_bytes(written)} written before the disk filled"
    else:
        need = "needs more space"
    have = f"the device has {format_bytes(free)} free" if free is not None else "free space unknown"
    return DiskFullError(f"{target}: disk full: writing it {need}, {have}; free some space or choose another output path (nothing was left half-written)")


def check_free_space(target: str | os.PathLike[str], needed: int) -> None:
    """Refuse, before anything is created, a file of `needed` bytes that cannot fit where `target` goes."""
    target = Path(target)
    free = _free_bytes(target.parent)
    if free is not None and needed > free:
        raise disk_full_error(target, needed)


def _path_error(exc: OSError, target: Path, option: str) -> CqdError:
    """A user-facing CqdError for an OSError about `target`'s folder or name."""
    culprit = Path(exc.filename) if getattr(exc, "filename", None) else target
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in [culprit, *culprit.parents] if p.exists() and not p.is_dir()), culprit)
        return CqdError(f"cannot write {target}: {blocker} is a file, not a folder; choose another {option}")
    if isinstance(exc, IsADirectoryError) or exc.errno == errno.EISDIR:
        return CqdError(f"cannot write {target}: it is an existing folder; give {option} a file name")
    if exc.errno in _NOT_WRITABLE:
        reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return CqdError(f"cannot write {target}: {culprit if culprit != target else target.parent} is not writable ({reason}); choose a writable {option}")
    if exc.errno in _DISK_FULL:
        return disk_full_error(target, None)
    return CqdError(f"cannot write {target}: {exc.strerror or exc}; choose another {option}")


def check_output_dir(folder: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create `folder` if needed and make sure files can be written in it; one-line CqdError if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CqdError(f"{option} {folder} is a file, not a folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _path_error(exc, folder, option) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CqdError(f"{option} {folder} is not writable (permission denied or read-only); choose a writable folder")
    return folder


def check_relative_key(key: str, what: str) -> str:
    """`key` as a path below a root (`name` or `name/sub`): no absolute path, `..`, `.`, empty part or NUL.

    Names from a config or an option (`data.name`, `evaluate --name`, a run key) become folders under
    `--out` or the prepared store; one that climbs out of it is refused with a one-line error naming `what`.
    """
    text = str(key)
    parts = text.replace("\\", "/").split("/")
    if not text or "\0" in text or text.startswith(("/", "~")) or any(p in ("", ".", "..") for p in parts):
        raise CqdError(f"{what}: '{text}' must be a plain folder name (no '/', '..' or absolute path): it names a folder inside its root")
    return text


def check_output_file(target: str | os.PathLike[str], option: str = "--out") -> Path:
    """Make sure `target` can be written (not a folder, its folder creatable and writable) before long work."""
    target = Path(target)
    if target.is_dir():
        raise CqdError(f"{option} {target} is an existing folder; give a file name (e.g. {target / 'gallery.png'})")
    check_output_dir(target.parent, option)
    return target


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], expected_bytes: int | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` on success.

    The temporary file is `.<name>.<pid>@<host>.<random>.tmp<suffix>`: the
    writer's process id and host, so `remove_stale_temporaries` can tell a
    dead writer's leftover from a live one's file. It keeps the target's suffix, so writers that dispatch on
    the extension (matplotlib, cv2.imwrite) still work. On any exception the
    temporary file is removed and the target is left untouched. A full disk
    (`expected_bytes`, when known, goes into the message) and an unwritable
    destination become one-line `CqdError`s. `durable` False skips the fsync
    before the rename: for a writer of many files that syncs once before
    writing the marker that says they are complete (`make_synthetic_dataset`).
    """
    target = Path(target)
    if expected_bytes:
        check_free_space(target, expected_bytes)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_owner()}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    except OSError as exc:
        raise _path_error(exc, target, "output path") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise _path_error(exc, target, "output path") from None
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _caused_by_full_disk(exc) or (isinstance(exc, RuntimeError) and _looks_full(target, expected_bytes, written)):
            raise disk_full_error(target, expected_bytes, written) from None
        raise


def _host() -> str:
    """This machine's short host name, as it goes into temporary names (letters, digits, '-')."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"


def _owner() -> str:
    return f"{os.getpid()}@{_host()}"


# `.<name>.<pid>@<host>.<8 random chars>.tmp<suffix>` (atomic_path), or `.<name>.<8 random chars>.tmp<suffix>`
# (written before the owner went into the name).
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.)?[a-z0-9_]{8}\.tmp(?:\.[^.]*)?$")
STALE_AFTER_S = 24 * 3600.0  # a day: far beyond any one write, even a store built for hours on another host


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process: alive
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike[str],
    patterns: Iterable[str] | None = None,
    *,
    recursive: bool = False,
    lock_held: bool = False,
    stale_after_s: float = STALE_AFTER_S,
) -> list[Path]:
    """Delete the temporary files `atomic_path` left in `folder` when its writer died; return what was removed.

    A killed process leaves `.<name>.<pid>@<host>.<random>.tmp<suffix>`
    behind (`.checkpoint.pt.*.tmp.pt`, `.*.tmp.jpg` in a prepared folder,
    `.store-*.tmp.npy` in a store cache). One is removed when its writer is
    dead for sure: the pid written on THIS host is no longer running. A live
    process's file is never touched. Files from another host (a shared file
    system) and those without an owner in the name (older versions) are
    removed only when the caller holds the folder's lock (`lock_held=True`:
    no other writer can be at work there), or when untouched for
    `stale_after_s` seconds (default a day; a write is renamed long before).

    `patterns` (globs on the file name, e.g. `".checkpoint.pt.*.tmp.pt"`)
    narrows what is looked at; by default every `atomic_path` temporary.
    `recursive` looks in sub-folders too (a prepared folder's class folders).
    Called by `prepare` on a folder it resumes and by the tensor store on its
    cache; a run folder's lock holder should call it with `lock_held=True`.
    """
    import fnmatch

    folder = Path(folder)
    if not folder.is_dir():
        return []
    globs = list(patterns) if patterns is not None else None
    host, now, removed = _host(), time.time(), []
    candidates = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    for path in candidates:
        match = _TEMPORARY.match(path.name)
        if match is None or (globs is not None and not any(fnmatch.fnmatchcase(path.name, g) for g in globs)):
            continue
        try:
            if not path.is_file() or path.is_symlink():
                continue
            if match["pid"] is not None and match["host"] == host:
                stale = not _pid_alive(int(match["pid"]))
            else:
                stale = lock_held or now - path.stat().st_mtime > stale_after_s
            if stale:
                path.unlink()
                removed.append(path)
        except OSError:  # gone meanwhile, or not ours to delete: leave it
            continue
    return removed


def _caused_by_full_disk(exc: BaseException | None) -> bool:
    """ENOSPC, also when a writer's clean-up error replaced it (torch's zip writer raises RuntimeError on top)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _looks_full(target: Path, expected_bytes: int | None, written: int) -> bool:
    """A writer that hides ENOSPC in a RuntimeError (torch.save to a path): judge by the free space left."""
    free = _free_bytes(target.parent)
    return free is not None and free < max(expected_bytes or 0, written, 64 * 1024)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    with atomic_path(target, len(data), durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in a (nested) object: what `torch.save` will need, roughly."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(target: str | os.PathLike[str], obj: Any) -> None:
    import torch

    with atomic_path(target, _tensor_bytes(obj)) as tmp:
        # Through a Python file object: a full disk then surfaces as OSError(ENOSPC),
        # not as the zip writer's opaque RuntimeError.
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
