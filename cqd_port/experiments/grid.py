"""The top of the experiments layer: `run_grid` and `submit_grid`. Nothing in the library imports this module.

Both share one preamble (`_prepare_grid`): plan the jobs (`cqd_port.experiments.plan`:
tables x methods x seeds x selection candidates), check every input before any
work (start models, preparable data, plugin contracts on a real image), check
that no run folder holds a run made with other settings (`launch.check_identities`,
unless `--rerun`), and record how the table was asked for (`grid.json`). Then
`run_grid` executes the jobs on this node (`launch.launch_local`) and
`submit_grid` submits them to SLURM (`launch.submit_slurm`); both collect
results.json/md from the run folders of the whole table (`collect`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cqd_port.errors import CqdError
from cqd_port.experiments.collect import collect_results, write_grid_json
from cqd_port.experiments.launch import SlurmOptions, absolute, check_identities, launch_local, submit_slurm, wait_for_jobs
from cqd_port.experiments.plan import GridPlan, Schedule, check_inputs, schedule_grid
from cqd_port.experiments.runfolder import FINISHED, RunFolder
from cqd_port.experiments.settings import GridConfig
from cqd_port.fileio import check_output_dir


@dataclass
class GridOutcome:
    """What `run_grid` leaves: the results files, their Markdown, the run.json of each run it executed."""

    results_json: Path
    results_md: Path
    markdown: str
    runs: dict[str, dict]


def progress_line(done: int, total: int, key: str, record: dict) -> str:
    """`[12/44] res_cub/cqd: 54.7% (1 m 02 s)`: the line printed when a run ends."""
    seconds = float(record.get("seconds") or 0.0)
    accuracy = record.get("accuracy")
    status = str(record.get("status", FINISHED))
    shown = f"{accuracy:.1f}%" if accuracy is not None and status == FINISHED else (status if status != FINISHED else "done")
    return f"[{done}/{total}] {key}: {shown} ({int(seconds // 60)} m {int(seconds % 60):02d} s)"


def _prepare_grid(plan: GridPlan, config: GridConfig, seeds: tuple[int, ...], select: dict[str, tuple[float, ...]] | None, rerun: bool) -> Schedule:
    """The shared preamble (module docstring): the schedule, every input checked, grid.json written."""
    schedule = schedule_grid(plan, config.catalog(), seeds, select)
    check_inputs(schedule, config)
    check_identities(schedule, config, rerun)
    check_output_dir(config.out, "--out")  # a file, /proc, a read-only folder: one line, before any job starts
    write_grid_json(config.out, plan.table, plan.options, seeds, select, absolute(config))
    return schedule


def run_grid(
    plan: GridPlan,
    config: GridConfig,
    on_run: Callable[[str, dict], None] | None = None,
    *,
    seeds: tuple[int, ...] = (0,),
    select: dict[str, tuple[float, ...]] | None = None,
    rerun: bool = False,
) -> GridOutcome:
    """Execute every job of `plan` not done on this node (`launch.launch_local`), then collect.

    `config.gpus` are the slots (none or one: in this process, one run after
    the other). `on_run(key, record)` is called after each run (the demo's
    progress). results.json/md are then assembled from the run folders of the
    whole table (`collect`).
    """
    schedule = _prepare_grid(plan, config, seeds, select, rerun)
    keys = [n.key for n in schedule.runs()]
    # counted per reported run, not by reading the folders: two slots finishing together must not both say [2/4]
    done_keys = {k for k in keys if RunFolder(Path(config.out) / k).status() == FINISHED}

    def on_done(node, record: dict) -> None:
        if node.kind != "run":
            return
        if on_run is not None:
            on_run(node.key, record)
        elif config.progress:
            if record.get("status") == FINISHED:
                done_keys.add(node.key)
            print(progress_line(len(done_keys), len(keys), node.key, record), flush=True)

    say = print if config.progress else (lambda _message: None)
    records = launch_local(schedule, config, config.gpus, rerun, on_done=on_done, say=say)
    json_path, md_path = collect_results(plan.table, plan.options, seeds, select, config)
    return GridOutcome(json_path, md_path, md_path.read_text(encoding="utf-8"), records)


def submit_grid(
    plan: GridPlan,
    config: GridConfig,
    slurm: SlurmOptions,
    *,
    seeds: tuple[int, ...] = (0,),
    select: dict[str, tuple[float, ...]] | None = None,
    rerun: bool = False,
    wait: bool = False,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, dict], GridOutcome]:
    """Submit the jobs of `plan` to SLURM (`launch.submit_slurm`), optionally follow them, collect.

    Returns the jobs (as written to `<out>/slurm-jobs.json`) and the results
    collected so far (cells of unfinished runs pending).
    """
    schedule = _prepare_grid(plan, config, seeds, select, rerun)
    jobs = submit_slurm(schedule, config, slurm, rerun, say=say)
    if wait and jobs:
        try:
            wait_for_jobs(schedule, config, jobs, progress=config.progress)
        except CqdError:  # jobs ended without their runs: the table still shows what did finish
            collect_results(plan.table, plan.options, seeds, select, config)
            raise
    json_path, md_path = collect_results(plan.table, plan.options, seeds, select, config)
    return jobs, GridOutcome(json_path, md_path, md_path.read_text(encoding="utf-8"), {})
