"""Launching a grid's jobs with submitit: on this node (`local`) or as SLURM jobs (`slurm`).

* `local` (the default): the jobs run on this machine, as many at once as
  there are *slots*. `--gpus 0,1` gives two slots, each job pinned to its GPU
  with `CUDA_VISIBLE_DEVICES` by submitit's `LocalExecutor` (`--gpus 0,0,1,1`:
  two jobs per GPU); with `--device cpu` the slots are CPU processes. With
  one slot (no `--gpus`) the jobs run one after the other in this process,
  sharing one decoded-data cache. Data variants are prepared first, in this
  process; a failed job is reported when it fails, its dependents are not
  started, the independent ones go on.
* `slurm`: one SLURM job per data variant to prepare (the first stage) and one
  per run, each depending (`afterok`) on the jobs of the runs it starts from or
  distils from and of the data it reads. `submit` returns after submitting,
  having printed and written (`<out>/slurm-jobs.json`) every job id and its
  dependencies; `wait` follows them with a progress bar. A preempted or
  timed-out job is requeued by submitit (`NodeJob` is `Checkpointable`) and the
  run resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit

from cqd_port.data.catalog import DataVariant, DomainData
from cqd_port.errors import CqdError
from cqd_port.experiments.job import PENDING, differing, identity
from cqd_port.experiments.plan import JobResolver, Node, Schedule, run_variants, workspace
from cqd_port.experiments.run import execute_run
from cqd_port.experiments.runfolder import FINISHED, RunFolder, RunLock, is_failed, mismatch_error, read_run_json
from cqd_port.experiments.settings import GridConfig
from cqd_port.fileio import atomic_write_json

LAUNCHERS = ("local", "slurm")
SLURM_JOBS = "slurm-jobs.json"
SUBMITIT_FOLDER = ".submitit"


@dataclass
class SlurmOptions:
    """What each SLURM job asks for (`reproduce --partition ... --sbatch-extra ...`)."""

    partition: str | None = None
    account: str | None = None
    time_minutes: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem: str | None = None  # e.g. "64G"
    extras: list[str] = field(default_factory=list)  # "--qos=high", "constraint=a100", ...
    max_requeues: int = 5

    def additional(self) -> dict[str, Any]:
        """`--sbatch-extra` values as sbatch flags (`--qos=high` and `qos=high` alike; a bare `--exclusive` is a switch)."""
        extra: dict[str, Any] = {}
        for item in self.extras:
            name, sep, value = item.lstrip("-").partition("=")
            if not name:
                raise CqdError(f"--sbatch-extra {item!r}: expected an sbatch option such as --qos=high")
            extra[name.replace("-", "_")] = value if sep else True
        return extra


class NodeJob(submitit.helpers.Checkpointable):
    """One node of the schedule as a submitit job; requeued as it is (the run resumes from its checkpoint)."""

    def __init__(self, node: Node, schedule: Schedule, config: GridConfig, rerun: bool = False, data_ready: bool = False) -> None:
        self.node = node
        self.schedule = schedule
        self.config = config
        self.rerun = rerun
        self.data_ready = data_ready

    def __call__(self) -> dict[str, Any]:
        return execute_node(self.node, self.schedule, self.config, rerun=self.rerun, device=slot_device(self.config), data_ready=self.data_ready)


def slot_device(config: GridConfig) -> str:
    """The device of a launched job: the CPU with `--device cpu`, else the GPU the launcher pinned (CUDA_VISIBLE_DEVICES)."""
    if str(config.device) == "cpu":
        return "cpu"
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return "cuda:0"  # the one GPU this job was given
    return str(config.device)


def prepare_variant(variant: DataVariant, config: GridConfig, say: Callable[[str], None] = print, progress: bool | None = None) -> None:
    """The data stage of one variant: prepared (or found current: rebuilt when its raw images changed) under its folder's lock."""
    catalog = config.catalog()
    folder = catalog.variant_dir(variant)
    with RunLock(folder.parent / f".{folder.name}.lock", say):
        catalog.ensure(variant, config.progress if progress is None else progress)


def execute_node(
    node: Node,
    schedule: Schedule,
    config: GridConfig,
    rerun: bool = False,
    data: DomainData | None = None,
    device: str | None = None,
    say: Callable[[str], None] = print,
    data_ready: bool = False,
) -> dict[str, Any]:
    """Run one job to completion (resuming what an earlier attempt left); return the run's run.json ({} for data).

    The job is resolved here, when it starts: its data made current first (unless the caller's data stage
    just did: `data_ready`), so the digests it records are those of the data it trains on; its
    candidates finished. It is executed by `cqd_port.experiments.run.execute_run`.
    """
    if node.kind == "prepare":
        assert node.variant is not None
        prepare_variant(node.variant, config, say)
        return {}
    run = node.run
    assert run is not None
    if not data_ready:
        for variant in run_variants(run):
            prepare_variant(variant, config, say, progress=False)
    resolver = JobResolver(schedule, config)
    archs = [run.arch] if run.trains and run.init == "imagenet" else []
    space = replace(workspace(config, archs), device=device or str(config.device))
    if data is None:
        data = DomainData(lambda v: space.catalog.ensure(v, False), domain_a=config.domain_a)
    job = resolver.job(node)
    selection = resolver.selection(node) if run.select_from else None
    return execute_run(node, job, space, data, rerun=rerun, selection=selection, say=say)


def absolute(config: GridConfig) -> GridConfig:
    """`config` with every path absolute (jobs may start in another folder)."""
    changes = {}
    for name in ("out", "prepared", "models", "cub_root", "cars_root", "sed_model"):
        value = getattr(config, name)
        if value is not None:
            changes[name] = Path(value).resolve()
    changes["pretrained"] = {k: Path(v).resolve() for k, v in config.pretrained.items()}
    return replace(config, **changes)


def node_done(node: Node, resolver: JobResolver) -> bool:
    """A prepared variant exists, or a run finished with exactly the identity its job has now (data digests included)."""
    config = resolver.config
    if node.kind == "prepare":
        assert node.variant is not None
        return resolver.catalog.is_prepared(node.variant)
    job = resolver.job(node)
    return job.complete and run_folder(config, node.key).reusable(identity(job))


def run_folder(config: GridConfig, key: str) -> RunFolder:
    return RunFolder(Path(config.out) / key, key)


def check_identities(schedule: Schedule, config: GridConfig, rerun: bool, resolver: JobResolver | None = None) -> None:
    """Before any job starts: a run folder holding a run made with other settings is an error (unless --rerun).

    Parts of a job not known yet (data to be prepared, a selection to be made) are left out here;
    the run's own start compares them (`RunFolder.claim`). A folder whose last attempt failed or
    diverged is not in the way: it restarts with the new settings.
    """
    if rerun:
        return
    resolver = resolver or JobResolver(schedule, config)
    for node in schedule.runs():
        folder = run_folder(config, node.key)
        if not (folder.path / "run.json").is_file() or is_failed(folder.status()):
            continue
        names = known_mismatch(folder, identity(resolver.job(node)))
        if names:
            raise mismatch_error(folder.path, names)


def known_mismatch(folder: RunFolder, current: dict[str, Any]) -> list[str] | None:
    """What differs between a folder's saved identity and the parts of `current` already known
    (data not prepared yet and a selection not made yet are left out; the run's own start compares them)."""
    saved = folder.saved_identity()
    if saved is None:
        return folder.mismatch(current)
    now, then = dict(current), dict(saved)
    if PENDING in json.dumps(now.get("selection")):
        for key in ("selection", "lambda_", "temperature"):
            now.pop(key, None)
            then.pop(key, None)
    unknown = {label for label, digest in now.get("data", []) if digest == PENDING}
    now["data"] = [pair for pair in now.get("data", []) if pair[0] not in unknown]
    then["data"] = [pair for pair in then.get("data", []) if pair[0] not in unknown]
    for key in [k for k, value in now.items() if PENDING in json.dumps(value)]:
        now.pop(key)
        then.pop(key, None)
    return differing(then, now) or None


def _local_executor(config: GridConfig, slot: int) -> submitit.LocalExecutor:
    executor = submitit.LocalExecutor(folder=Path(config.out) / SUBMITIT_FOLDER / "%j")
    cpu = str(config.device) == "cpu"
    executor.update_parameters(timeout_min=7 * 24 * 60, gpus_per_node=0 if cpu else 1, visible_gpus=() if cpu else (slot,))
    return executor


def _status_line(key: str, record: dict) -> str | None:
    """What the launcher says about a run that ended without a result (diverged); None for a finished one."""
    status = str(record.get("status", ""))
    if status and status != FINISHED:
        return f"{key}: {status}" + (f" ({record['reason']})" if record.get("reason") else "")
    return None


def launch_local(
    schedule: Schedule,
    config: GridConfig,
    slots: tuple[int, ...] = (),
    rerun: bool = False,
    on_done: Callable[[Node, dict], None] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run every job not done on this node (see the module docstring); return the run.json of each run executed.

    The data stage comes first, in this process (each variant prepared, or found current: a variant whose
    raw images changed is rebuilt), then every run is resolved with its data's digests: a run finished with
    exactly that identity is reused, any other is executed (`RunFolder.claim` refuses a folder made with
    other settings).
    """
    config = absolute(config)
    for node in schedule.prepares():
        prepare_variant(node.variant, config, say)
    resolver = JobResolver(schedule, config)
    records: dict[str, dict] = {}
    todo = [n for n in schedule.runs() if not node_done(n, resolver)]
    done = {n.key for n in schedule.nodes.values()} - {n.key for n in todo}
    for key in done:
        if schedule.nodes[key].kind == "run":
            say(f"{key}: done, reused")
    if len(slots) <= 1:
        data = DomainData(lambda v: config.catalog().ensure(v, False), domain_a=config.domain_a)
        device = f"cuda:{slots[0]}" if slots and str(config.device) != "cpu" else config.device
        for node in todo:
            records[node.key] = execute_node(node, schedule, config, rerun, data=data, device=device, say=say, data_ready=True)
            line = _status_line(node.key, records[node.key])
            if line:
                say(line)
            if on_done is not None:
                on_done(node, records[node.key])
        return records

    worker_config = replace(config, progress=False)
    pending = list(todo)
    free = list(slots)
    running: dict[str, tuple[Any, int]] = {}
    failed: dict[str, str] = {}
    try:
        while pending or running:
            for node in list(pending):
                blocked = [d for d in node.depends if d in failed]
                if blocked:
                    pending.remove(node)
                    failed[node.key] = f"not started: {blocked[0]} failed"
                    say(f"{node.key}: not started ({blocked[0]} failed)")
                    continue
                if free and all(d in done for d in node.depends):
                    slot = free.pop(0)
                    job = _local_executor(config, slot).submit(NodeJob(node, schedule, worker_config, rerun, data_ready=True))
                    running[node.key] = (job, slot)
                    pending.remove(node)
                    say(f"{node.key}: started on {'cpu' if str(config.device) == 'cpu' else f'GPU {slot}'} (job {job.job_id})")
            if not running:
                if pending:
                    raise CqdError(f"runs {', '.join(n.key for n in pending)} wait for runs that cannot finish; check their run.json")
                break
            time.sleep(0.2)
            for key, (job, slot) in list(running.items()):
                if not job.done():
                    continue
                del running[key]
                free.append(slot)
                try:
                    records[key] = job.result()
                except Exception as exc:  # the job's own error, with its log
                    message = str(exc).strip().splitlines()
                    failed[key] = message[-1] if message else type(exc).__name__
                    say(f"{key}: FAILED ({failed[key]}); log: {job.paths.stderr}")
                    continue
                done.add(key)
                line = _status_line(key, records[key])
                if line:
                    say(line)
                if on_done is not None:
                    on_done(schedule.nodes[key], records[key])
    except BaseException:
        for job, _ in running.values():
            job.cancel(check=False)
        raise
    if failed:
        first = next(iter(failed))
        raise CqdError(f"{len(failed)} run(s) did not finish, first {first}: {failed[first]}; fix it and rerun the same command to resume")
    return records


# --------------------------------------------------------------------------- SLURM


def _active_jobs(job_ids: list[str]) -> set[str]:
    """Which of `job_ids` SLURM still holds (pending or running), via squeue; none when squeue is unavailable."""
    if not job_ids:
        return set()
    try:
        result = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in result.stdout.splitlines() if line.strip()} & set(job_ids)


def submit_slurm(
    schedule: Schedule, config: GridConfig, options: SlurmOptions, rerun: bool = False, say: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
    """Submit one job per data variant to prepare and per run not done; write and return `<out>/slurm-jobs.json`.

    Jobs of an earlier submission that SLURM still holds are kept (not
    submitted twice) and serve as dependencies of the new ones.
    """
    config = absolute(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs_file = out / SLURM_JOBS
    earlier: dict[str, dict[str, Any]] = {}
    if jobs_file.is_file():
        try:
            earlier = json.loads(jobs_file.read_text(encoding="utf-8")).get("jobs", {})
        except (OSError, ValueError):
            earlier = {}
    still = _active_jobs([str(j["job_id"]) for j in earlier.values()])
    try:
        executor = submitit.SlurmExecutor(folder=out / SUBMITIT_FOLDER / "%j", max_num_timeout=options.max_requeues)
    except RuntimeError as exc:
        raise CqdError(f"--launcher slurm: {exc} (run `cqd-port reproduce` on a SLURM login node, or use --launcher local)") from None
    worker_config = replace(config, progress=False)
    resolver = JobResolver(schedule, config)
    jobs: dict[str, dict[str, Any]] = {}
    for node in schedule.nodes.values():
        if node.key in earlier and str(earlier[node.key]["job_id"]) in still:
            jobs[node.key] = earlier[node.key]
            continue
        if node_done(node, resolver):
            continue
        after = [str(jobs[d]["job_id"]) for d in node.depends if d in jobs]
        gpus = 0 if node.kind == "prepare" or str(config.device) == "cpu" else options.gpus_per_job
        parameters: dict[str, Any] = {
            "job_name": f"cqd-{node.key}".replace("/", "-"),
            "time": options.time_minutes,
            "cpus_per_task": options.cpus_per_job,
            "gpus_per_node": gpus,
            "ntasks_per_node": 1,
            "signal_delay_s": 120,
            "dependency": f"afterok:{':'.join(after)}" if after else None,
            "additional_parameters": options.additional(),
        }
        for name, value in (("partition", options.partition), ("account", options.account), ("mem", options.mem)):
            if value:
                parameters[name] = value
        executor.update_parameters(**parameters)
        job = executor.submit(NodeJob(node, schedule, worker_config, rerun))
        jobs[node.key] = {"job_id": str(job.job_id), "kind": node.kind, "depends": [d for d in node.depends if d in jobs], "after": after}
        say(f"{node.key}: job {job.job_id}" + (f" (afterok {', '.join(after)})" if after else ""))
    atomic_write_json(jobs_file, {"out": str(out), "jobs": jobs})
    return jobs


def wait_for_jobs(schedule: Schedule, config: GridConfig, jobs: dict[str, dict[str, Any]], progress: bool = True, poll_seconds: float = 30.0) -> None:
    """Follow submitted jobs until SLURM holds none of them, with a bar of finished runs."""
    from rich.progress import Progress

    config = absolute(config)
    runs = [n for n in schedule.runs()]
    with Progress(disable=not progress) as bar:
        task = bar.add_task("runs finished", total=len(runs))
        while True:
            finished = sum(1 for n in runs if read_run_json(Path(config.out) / n.key).get("status") == FINISHED)
            bar.update(task, completed=finished)
            if finished == len(runs):
                return
            if not _active_jobs([str(j["job_id"]) for j in jobs.values()]):
                break
            time.sleep(poll_seconds)
    ended = [(n.key, str(jobs[n.key]["job_id"])) for n in runs if n.key in jobs and read_run_json(Path(config.out) / n.key).get("status") != FINISHED]
    if ended:  # SLURM holds none of the jobs any more, yet these runs did not finish: say so, with their logs
        states = _job_states([job_id for _, job_id in ended])
        first_key, first_id = ended[0]
        log = Path(config.out) / SUBMITIT_FOLDER / first_id / f"{first_id}_0_log.err"
        unknown = sum(1 for _, job_id in ended if job_id not in states)
        raise CqdError(
            f"{len(ended)} run(s) did not finish and SLURM no longer holds their jobs ({unknown} unknown to squeue and sacct: vanished); "
            f"first {first_key}: job {first_id} {states.get(first_id, 'vanished')}, log {log}; "
            f"logs of all: {Path(config.out) / SUBMITIT_FOLDER}/<job id>/; rerun the same command to resubmit them"
        )


def _job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's final state of `job_ids` (sacct), for the jobs sacct knows; {} when sacct is unavailable."""
    try:
        result = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in job_ids and state:
            states[job_id] = state.split()[0]
    return states
