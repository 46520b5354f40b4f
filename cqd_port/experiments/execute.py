"""One job of a grid, whatever launched it: prepare a data variant, or execute one run, safely.

Safety of a run folder:

* a lock (`.lock`, created exclusively, holding host, pid, time and the SLURM
  job id) so that two processes never train the same run: the second waits
  until the first releases it, then finds the run finished and reuses it. A
  lock left by a process that is gone (same host, pid dead; or the same SLURM
  job, requeued) is taken over, with a message;
* its identity (`identity.json`: `cqd_port.experiments.plan.run_identity` plus
  the digests of the prepared data it reads). A folder holding a run made with
  other settings is never reused: a one-line error names the settings that
  differ and the fix (a new `--out`, or `--rerun`, which discards that run and
  trains it again);
* `executions.log`: one line per process that started or resumed the run
  (host, pid, time), what the concurrency tests count.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cqd_port.errors import CqdError
from cqd_port.experiments.methods import RUN_JSON, read_run_json
from cqd_port.experiments.plan import Node, Schedule, differing, file_digest, run_identity
from cqd_port.fileio import atomic_write_json

if TYPE_CHECKING:
    from cqd_port.experiments.grid import GridConfig

LOCK = ".lock"
IDENTITY = "identity.json"
EXECUTIONS = "executions.log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file in `folder` (see the module docstring); waits while a live process holds it."""

    def __init__(self, path: Path, say: Callable[[str], None] = print, poll_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.say = say
        self.poll_seconds = poll_seconds
        self.mine: dict[str, Any] = {}

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or torn by a crash

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder:  # unreadable: stale once it is old enough not to be mid-write
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                return True
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job") == job and holder.get("pid") != os.getpid():
            return True  # this very job, requeued after preemption or a timeout
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "slurm_job": os.environ.get("SLURM_JOB_ID")}
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue
                if self._stale(holder):
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
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self.mine, stream)
            return

    def release(self) -> None:
        if self._holder() == self.mine:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def data_identity(node: Node, config: GridConfig) -> dict[str, str]:
    """Digest of each prepared variant's manifest the run reads (what the data was made from and how)."""
    from cqd_port.data.prepare import MANIFEST

    run = node.run
    assert run is not None
    variants = dict.fromkeys((*run.train, run.test, *((run.teacher_data,) if run.teacher_data else ())))
    out = {}
    for variant in variants:
        manifest = config.variant_dir(variant) / MANIFEST
        out[config.concrete(variant).label] = file_digest(manifest)[:16] if manifest.is_file() else "missing"
    return out


def saved_identity(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / IDENTITY
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def identity_mismatch(folder: Path, settings: dict[str, Any], data: dict[str, str] | None = None) -> list[str] | None:
    """None when `folder` may be reused for a run with these settings (and data, when given); else what differs.

    A folder with no run in it is reusable. One with a run.json but no
    identity.json was made by an older version: 'identity record' differs.
    """
    folder = Path(folder)
    saved = saved_identity(folder)
    if saved is None:
        return ["identity record (the run predates identity records)"] if (folder / RUN_JSON).is_file() else None
    names = differing(saved.get("settings", {}), settings)
    if data is not None and saved.get("data") is not None:
        names += [f"data {k}" for k in differing(saved["data"], data)]
    return names or None


def mismatch_error(folder: Path, names: list[str]) -> CqdError:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return CqdError(f"{folder} holds a run made with other settings ({shown}); use a new --out, or --rerun to train it again")


def _clear(folder: Path) -> None:
    """Empty a run folder (all but its lock) for `--rerun`."""
    for entry in folder.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def slot_device(config: GridConfig) -> str:
    """The device of a launched job: the CPU with `--device cpu`, else the GPU the launcher pinned (CUDA_VISIBLE_DEVICES)."""
    if str(config.device) == "cpu":
        return "cpu"
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return "cuda:0"  # the one GPU this job was given
    return str(config.device)


def execute_node(
    node: Node,
    schedule: Schedule,
    config: GridConfig,
    rerun: bool = False,
    data: Any = None,
    device: str | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one job to completion (resuming what an earlier attempt left); return the run's run.json ({} for data)."""
    from cqd_port.experiments.grid import ensure_variant

    if node.kind == "prepare":
        assert node.variant is not None
        folder = config.variant_dir(node.variant)
        with RunLock(folder.parent / f".{folder.name}.lock", say):
            ensure_variant(node.variant, config, config.progress)
        return {}
    from cqd_port.experiments.methods import DomainData, execute_run

    run = node.run
    assert run is not None
    folder = Path(config.out) / node.key
    with RunLock(folder / LOCK, say):
        settings = run_identity(node, schedule, config)
        data_ids = data_identity(node, config)
        names = identity_mismatch(folder, settings, data_ids)
        if names and not rerun:
            raise mismatch_error(folder, names)
        if names:
            say(f"{node.key}: discarding the run made with other settings ({', '.join(names[:6])}) (--rerun)")
            _clear(folder)
        record = read_run_json(folder)
        if record.get("status") == "finished":
            return record
        atomic_write_json(folder / IDENTITY, {"settings": settings, "data": data_ids})
        with open(folder / EXECUTIONS, "a", encoding="utf-8") as log:
            log.write(f"{socket.gethostname()} {os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')} {os.environ.get('SLURM_JOB_ID', '-')}\n")
        seeded = replace(config, seed=node.seed)
        if data is None:
            data = DomainData(lambda v: ensure_variant(v, seeded, False), domain_a=config.domain_a)
        return execute_run(run, seeded, data, device=device or config.device, progress=config.progress)
