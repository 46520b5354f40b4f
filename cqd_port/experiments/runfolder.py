"""The life of one run folder: lock, identity, states, executions log.

Everything that touches a run folder's bookkeeping goes through here:

* `RunLock`: an exclusive `.lock` (host, pid, time, SLURM job id) so that two
  processes never work on one run; the second waits until the first releases
  it. A lock left by a process that is gone (same host, pid dead; or the same
  SLURM job, requeued) is taken over, with a message. `RunFolder.claim` is the
  one place that takes it for a run.
* `identity.json`: the `RunJob` identity the run was made with
  (`cqd_port.experiments.job`). `RunFolder.claim` is the one guard: a
  finished run with the same identity is reused; a folder whose last attempt
  failed or diverged is restarted with the new settings (nothing in it is worth
  keeping); an unfinished or finished run made with other settings is refused
  with a one-line error naming what differs and the fix (a new `--out`, or
  `--rerun`, which discards it).
* `run.json` states, written only by `RunFolder.mark_*`: `running`,
  `interrupted` (Ctrl-C; resumes), `finished`, `failed: <one line>`, `diverged at epoch N`, `stopped: disk full`.
  Only `finished` counts as a result; every other state is shown as it is.
* `executions.log`: one line per process that started or resumed the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cqd_port.errors import CqdError
from cqd_port.experiments.job import differing
from cqd_port.fileio import _path_error, atomic_write_json, check_output_dir, remove_stale_temporaries

RUN_JSON = "run.json"
LOCK = ".lock"
IDENTITY = "identity.json"
EXECUTIONS = "executions.log"

RUNNING = "running"
INTERRUPTED = "interrupted"
FINISHED = "finished"
DISK_FULL = "stopped: disk full"
FAILED_PREFIX = "failed: "
DIVERGED_PREFIX = "diverged at epoch "


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file (see the module docstring); waits while a live process holds it."""

    def __init__(self, path: Path, say: Callable[[str], None] = print, poll_seconds: float = 1.0, option: str = "--out") -> None:
        self.path = Path(path)
        self.say = say
        self.poll_seconds = poll_seconds
        self.option = option  # how the user named the folder (`--out`, the config's `out`), for error messages
        self.mine: dict[str, Any] = {}

    def holder(self) -> dict[str, Any] | None:
        """Who holds it: the lock's JSON, {} while unreadable (being written or torn), None when free."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def is_stale(self, holder: dict[str, Any]) -> bool:
        if not holder:  # unreadable: stale once it is old enough not to be mid-write
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                return True
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job") == job and holder.get("pid") != os.getpid():
            return True  # this very job, requeued after preemption or a timeout
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))

    def _check_not_foreign(self) -> None:
        """A lock is a plain file this class writes; a folder, a symbolic link (dangling or not) or a device there is refused."""
        if os.path.islink(self.path) or (os.path.lexists(self.path) and not self.path.is_file()):
            kind = "symbolic link" if os.path.islink(self.path) else "folder" if self.path.is_dir() else "special file"
            raise CqdError(f"{self.path} is a {kind}, not a lock file cqd-port writes; remove it, or choose another {self.option}")

    def acquire(self) -> None:
        check_output_dir(self.path.parent, self.option)  # a file, /proc, a read-only folder: one line, before the loop
        waited = False
        while True:
            self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "slurm_job": os.environ.get("SLURM_JOB_ID")}
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                self._check_not_foreign()
                holder = self.holder()
                if holder is None:
                    continue
                if self.is_stale(holder):
                    self.say(
                        f"{self.path.parent}: taking over a stale lock (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
                        f"since {holder.get('time', '?')}; that process is gone)"
                    )
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                if not waited:
                    self.say(f"{self.path.parent}: held by host {holder.get('host')} pid {holder.get('pid')}; waiting for it")
                    waited = True
                time.sleep(self.poll_seconds)
                continue
            except OSError as exc:  # read-only file system, permission denied, ...
                raise _path_error(exc, self.path, self.option) from None
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self.mine, stream)
            return

    def release(self) -> None:
        if self.holder() == self.mine:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_run_json(folder: Path) -> dict[str, Any]:
    """A run folder's run.json, or {} when it is missing or unreadable (the run counts as not started)."""
    path = Path(folder) / RUN_JSON
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_failed(status: str) -> bool:
    """`failed: ...` or `diverged at epoch N`: the last attempt ended without a result."""
    return status.startswith(FAILED_PREFIX) or status.startswith(DIVERGED_PREFIX)


def diverged_epoch(message: str) -> int | None:
    """The epoch a divergence message names ('... at epoch N ...'), if any."""
    found = re.search(r"at epoch (\d+)", message)
    return int(found.group(1)) if found else None


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


class RunFolder:
    """One run folder `<out>/<key>` and its bookkeeping (see the module docstring)."""

    def __init__(self, path: Path, key: str | None = None) -> None:
        self.path = Path(path)
        self.key = key or self.path.name

    # ------------------------------------------------------------------ reading

    def record(self) -> dict[str, Any]:
        return read_run_json(self.path)

    def status(self) -> str:
        """'pending' (no run.json), 'running', 'finished', 'failed: ...', 'diverged at epoch N', 'stopped: disk full'."""
        return str(self.record().get("status", "pending"))

    def saved_identity(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / IDENTITY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data.get("job") if isinstance(data, dict) else None

    def mismatch(self, current: dict[str, Any]) -> list[str] | None:
        """None when the folder is empty or holds a run of this identity; else the fields that differ.

        A run.json without an identity record was made by an older version: 'identity record' differs.
        """
        saved = self.saved_identity()
        if saved is None:
            return ["identity record (the run predates RunJob identities)"] if (self.path / RUN_JSON).is_file() else None
        return differing(saved, current) or None

    def reusable(self, current: dict[str, Any]) -> bool:
        """Finished with exactly this identity."""
        return self.status() == FINISHED and self.mismatch(current) is None

    def lock(self, say: Callable[[str], None] = print) -> RunLock:
        return RunLock(self.path / LOCK, say)

    # ------------------------------------------------------------------ the one guard

    @contextmanager
    def claim(self, current: dict[str, Any], rerun: bool = False, say: Callable[[str], None] = print) -> Iterator[dict[str, Any] | None]:
        """Hold the folder's lock for one attempt at the run of identity `current`.

        Yields the finished record when the run may be reused as it is (nothing
        to do), else None after having made the folder ready for the attempt
        (identity written, execution logged). See the module docstring for
        when a folder made with other settings is cleared or refused.
        """
        with self.lock(say):
            remove_stale_temporaries(self.path, lock_held=True)  # a killed writer's `.checkpoint.pt.*.tmp.pt`: nobody else writes here
            names = self.mismatch(current)
            status = self.status()
            if names:
                if is_failed(status) or status == "pending" or rerun:  # pending: a start that failed before run.json
                    reason = "--rerun" if rerun else f"its last attempt ended '{status}'"
                    say(f"{self.key}: discarding the run made with other settings ({', '.join(names[:6])}) ({reason})")
                    self.clear()
                else:
                    raise mismatch_error(self.path, names)
            elif status == FINISHED:
                yield self.record()
                return
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path / IDENTITY, {"job": current})
            with open(self.path / EXECUTIONS, "a", encoding="utf-8") as log:
                log.write(f"{socket.gethostname()} {os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')} {os.environ.get('SLURM_JOB_ID', '-')}\n")
            yield None

    def clear(self) -> None:
        """Empty the folder (all but its lock): a run made with other settings is discarded."""
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    # ------------------------------------------------------------------ states (the only writers of run.json)

    def mark_running(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "status": RUNNING}
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / RUN_JSON, record)
        return record

    def mark_finished(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "status": FINISHED}
        atomic_write_json(self.path / RUN_JSON, record)
        return record

    def mark_interrupted(self) -> dict[str, Any]:
        """'interrupted' (Ctrl-C): the checkpoint stays, the same command resumes the run."""
        return self._mark(INTERRUPTED)

    def mark_failed(self, message: str) -> dict[str, Any]:
        return self._mark(f"{FAILED_PREFIX}{one_line(message)}")

    def mark_diverged(self, epoch: int, message: str) -> dict[str, Any]:
        return self._mark(f"{DIVERGED_PREFIX}{epoch}", reason=one_line(message))

    def mark_disk_full(self) -> dict[str, Any]:
        """'stopped: disk full'. When even the small atomic write finds no space, rewrite run.json in place:
        the file already exists, so its blocks are there (the new text differs by a few bytes)."""
        record = self.record()
        if not record:
            return {}
        record["status"] = DISK_FULL
        try:
            atomic_write_json(self.path / RUN_JSON, record)
        except CqdError:
            with open(self.path / RUN_JSON, "r+", encoding="utf-8") as handle:
                handle.write(json.dumps(record, indent=2) + "\n")
                handle.truncate()
        return record

    def _mark(self, status: str, **extra: Any) -> dict[str, Any]:
        if not self.path.is_dir():
            return {"status": status, **extra}
        record = {**self.record(), "status": status, **extra}
        atomic_write_json(self.path / RUN_JSON, record)
        return record


def mismatch_error(folder: Path, names: list[str]) -> CqdError:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return CqdError(f"{folder} holds a run made with other settings ({shown}); use a new --out, or --rerun to train it again")
