"""`reproduce --dry-run`: every job of a command (all seeds, validation runs), its state and its settings.

Reads only; nothing is created. A run's state is its folder's (`RunFolder`):
pending, finished (and whether its identity still matches the job: a run
made with other settings is flagged), running on a host (a live lock),
interrupted (resumes at epoch N), `failed: ...`, `diverged at epoch N`,
`stopped: disk full`. A distilling run chosen on validation shows the chosen
lambda and T once its candidates have finished.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cqd_port.errors import CqdError
from cqd_port.experiments.job import identity
from cqd_port.experiments.networks import imagenet_model_candidates
from cqd_port.experiments.plan import GridPlan, JobResolver, Node, schedule_grid
from cqd_port.experiments.runfolder import FINISHED, INTERRUPTED, RUNNING, RunFolder
from cqd_port.experiments.settings import GridConfig


def status_text(folder: RunFolder) -> str:
    """A run folder's state in words (see the module docstring; identity aside)."""
    from cqd_port.train.checkpoint import CHECKPOINT_NAME, checkpoint_epoch

    status = folder.status()
    if status not in (RUNNING, INTERRUPTED):
        return status
    lock = folder.lock()
    holder = lock.holder()
    if holder and not lock.is_stale(holder):
        return f"running on {holder.get('host')} pid {holder.get('pid')}"
    # the checkpoint's epoch, not history.json's: epochs after the last checkpoint (`checkpoint_interval`) are redone
    return f"interrupted, resumes at epoch {checkpoint_epoch(folder.path / CHECKPOINT_NAME) + 1}"


def _job_line(node: Node, resolver: JobResolver, out: Path) -> str:
    run = node.run
    assert run is not None
    folder = RunFolder(out / node.key, node.key)
    state = status_text(folder)
    try:
        job = resolver.job(node)
    except CqdError:  # e.g. a start model missing: listed under 'pretrained models'
        job = None
    if job is not None and state == FINISHED and job.complete and not folder.reusable(identity(job)):
        state = f"finished with other settings ({', '.join((folder.mismatch(identity(job)) or [])[:4])}): refused unless --rerun"
    shown = replace(run, batch_size=job.batch_size) if job is not None else run
    what = shown.describe()
    if run.select_from:
        if job is not None and job.lambda_ is not None and run.distiller is not None:
            what = what.replace(f"(weight: the best of {len(run.select_from)} validation runs)",
                                f"(weight {job.lambda_:g}: chosen on {len(run.select_from)} validation runs)")
        elif job is not None and job.lambda_ is not None:
            what = what.replace(f"(lambda and T: the best of {len(run.select_from)} validation runs)",
                                f"(lambda {job.lambda_:g}, T {job.temperature:g}: chosen on {len(run.select_from)} validation runs)")
        else:
            what = what.replace("validation runs)", "validation runs, not chosen yet)")
    after = f"  [after {', '.join(d for d in node.depends if not d.startswith('prepare/'))}]" if run.depends else ""
    return f"  {node.key} [{state}]: {what}{after}"


def describe_plan(plan: GridPlan, config: GridConfig, seeds: tuple[int, ...] = (0,), select: dict[str, tuple[float, ...]] | None = None) -> list[str]:
    """What `reproduce --dry-run` prints: every cell, every job (all seeds, validation runs), data variants and models."""
    catalog = config.catalog()
    schedule = schedule_grid(plan, catalog, seeds, select)
    resolver = JobResolver(schedule, config, catalog)
    out = Path(config.out)
    runs = schedule.runs()
    lines = [
        f"Table {plan.table}: {len(plan.cells)} cells, {len(runs)} jobs (seeds {', '.join(map(str, seeds))}"
        + (f"; lambda/T chosen on validation from {dict(select)}" if select else "")
        + f"), output {config.out}",
        "",
        "cells (task / method -> run):",
    ]
    for cell in plan.cells:
        shared = "" if cell.run == f"{cell.task}/{cell.method}" else "  (shared run)"
        lines.append(f"  {cell.task} / {cell.method} -> {cell.run}{shared}")
    lines += ["", "jobs (in dependency order):"]
    lines += [_job_line(node, resolver, out) for node in runs]
    lines += ["", "data variants:"]
    for variant in plan.variants():
        path = catalog.variant_dir(variant)
        state = "exists" if catalog.is_prepared(variant) else "missing, will be prepared"
        root = catalog.dataset_root(variant.dataset)
        if state != "exists" and root is None:
            state = f"missing; needs --{variant.dataset}-root to prepare it"
        if state != "exists" and catalog.concrete(variant).degradation == "edges" and config.sed_model is None:
            state += " and --sed-model (the paper's Structured Edge Detector)"
        lines.append(f"  {catalog.concrete(variant).label}: {path} ({state})")
    lines += ["", "pretrained models:"]
    for arch in plan.archs():
        if arch in config.pretrained:
            path = Path(config.pretrained[arch])
            lines.append(f"  {arch}: {path} ({'exists' if path.is_file() else 'missing'})")
            continue
        candidates = imagenet_model_candidates(config.models, arch)
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            lines.append(f"  {arch}: {found} (exists)")
        else:
            lines.append(f"  {arch}: {candidates[0]} (missing; run `cqd-port convert-weights {candidates[1]}`)")
    return lines
