"""Run folders -> results.json and results.md, for the whole table, every time.

Whatever subset a command ran, `collect_results` reads the run folders of
every cell of the table under every seed (with the notes of
`cqd_port.experiments.notes` on its interpretive settings, footnotes in
results.md): a cell is filled by the runs that
finished with the identity the current settings give (a folder holding a run
made with other settings does not count), and marked pending otherwise. So
two commands (or two SLURM jobs) never overwrite each other's view.

`grid.json` in the output folder records how the table was asked for (table,
plan options, seeds, selection grid, the `GridConfig`), so `cqd-port report`
and a later `reproduce` can collect again without the original command.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from cqd_port.data.synth import is_synthetic
from cqd_port.errors import CqdError
from cqd_port.experiments.job import identity
from cqd_port.experiments.notes import cell_notes, grid_settings
from cqd_port.experiments.paper import paper_table
from cqd_port.experiments.plan import COMPARED_WITH, JobResolver, candidate_setting, jsonable, plan_grid, schedule_grid
from cqd_port.experiments.results import Cell, write_results
from cqd_port.experiments.runfolder import DIVERGED_PREFIX, FINISHED, RunFolder, read_run_json
from cqd_port.experiments.settings import GridConfig
from cqd_port.fileio import atomic_write_json

GRID_JSON = "grid.json"
_PATH_FIELDS = ("out", "prepared", "models", "cub_root", "cars_root", "sed_model")


def _config_to_json(config: GridConfig) -> dict[str, Any]:
    return {f.name: jsonable(getattr(config, f.name)) for f in fields(config)}


def _config_from_json(data: dict[str, Any]) -> GridConfig:
    known = {f.name for f in fields(GridConfig)}
    values = {k: v for k, v in data.items() if k in known}
    for name in _PATH_FIELDS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    values["pretrained"] = {k: Path(v) for k, v in (values.get("pretrained") or {}).items()}
    values["gpus"] = tuple(values.get("gpus") or ())
    return GridConfig(**values)


def write_grid_json(out: Path, table: int, options: dict[str, Any], seeds: tuple[int, ...], select: dict[str, tuple[float, ...]] | None, config: GridConfig) -> None:
    atomic_write_json(
        Path(out) / GRID_JSON,
        {"table": table, "options": options, "seeds": list(seeds), "select": {k: list(v) for k, v in (select or {}).items()}, "config": _config_to_json(config)},
    )


def read_grid_json(out: Path) -> dict[str, Any] | None:
    path = Path(out) / GRID_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["config"] = _config_from_json(data["config"])
        data["select"] = {k: tuple(v) for k, v in (data.get("select") or {}).items()}
        data["seeds"] = tuple(data["seeds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CqdError(f"{path}: unreadable ({exc}); rerun the `cqd-port reproduce` command to rewrite it") from None
    return data


def paired_difference(first: dict[int, float], second: dict[int, float]) -> dict[str, Any]:
    """Mean of first - second over the seeds both have, with a two-sided 95% t-interval (none for one seed)."""
    seeds = sorted(set(first) & set(second))
    diffs = [first[s] - second[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean": None, "low": None, "high": None, "seeds": []}
    mean = sum(diffs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "low": None, "high": None, "seeds": seeds}
    from scipy.stats import t

    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "seeds": seeds}


def method_differences(by_cell: dict[tuple[str, str], dict[int, float]], distillers: list[str]) -> list[dict[str, Any]]:
    """Each distiller minus fine-tuning and minus CQD per task, paired by seed, with a 95% t-interval;
    `tie`: the interval contains 0 (within the noise of the seeds; None without an interval)."""
    rows = []
    for task in dict.fromkeys(task for task, _ in by_cell):
        for method in distillers:
            for versus in COMPARED_WITH:
                if (task, method) not in by_cell or (task, versus) not in by_cell:
                    continue
                difference = paired_difference(by_cell[(task, method)], by_cell[(task, versus)])
                tie = None if difference["low"] is None else bool(difference["low"] <= 0.0 <= difference["high"])
                rows.append({"task": task, "method": method, "versus": versus, **difference, "tie": tie})
    return rows


def collect_results(table: int, options: dict[str, Any], seeds: tuple[int, ...], select: dict[str, tuple[float, ...]] | None, config: GridConfig) -> tuple[Path, Path]:
    """Write `<out>/results.json` and `results.md` from the run folders of the whole table (see the module docstring)."""
    catalog = config.catalog()
    whole = plan_grid(table, None, None, **options)
    schedule = schedule_grid(whole, catalog, seeds, select)
    resolver = JobResolver(schedule, config, catalog)
    paper = paper_table(table)
    out = Path(config.out)

    def finished_value(key: str) -> float | None:
        folder = RunFolder(out / key, key)
        record = folder.record()
        if record.get("status") != FINISHED or record.get("accuracy") is None:
            return None
        try:
            job = resolver.job(schedule.nodes[key])
        except CqdError:  # e.g. its start model is not on this machine: its identity cannot be checked
            return None
        return float(record["accuracy"]) if job.complete and folder.reusable(identity(job)) else None

    def ended_without_result(key: str) -> str | None:
        status = str(read_run_json(out / key).get("status", ""))
        return f"{key}: {status} (no result)" if status.startswith(DIVERGED_PREFIX) or status.startswith("failed") else None

    cells: list[Cell] = []
    by_cell: dict[tuple[str, str], dict[int, float]] = {}
    for cell in whole.cells:
        values = {}
        for seed in seeds:
            value = finished_value(schedule.cells[(seed, cell.task, cell.method)])
            if value is not None:
                values[seed] = value
        by_cell[(cell.task, cell.method)] = values
        mean = sum(values.values()) / len(values) if values else None
        std = None
        if len(values) > 1:
            std = math.sqrt(sum((v - mean) ** 2 for v in values.values()) / (len(values) - 1))
        several = len(seeds) > 1
        notes = cell_notes(cell.method, whole.runs[cell.run], catalog)  # where the cell's setting is an interpretation
        notes += tuple(n for n in (ended_without_result(schedule.cells[(seed, cell.task, cell.method)]) for seed in seeds) if n)
        cells.append(Cell(cell.task, cell.method, mean, paper.value(cell.task, cell.method), values if several else None, std if several else None, notes))

    extra: dict[str, Any] = {}
    if len(seeds) > 1:
        extra["seeds"] = list(seeds)
        extra["differences"] = [
            {"task": task, **paired_difference(by_cell[(task, "cqd")], by_cell[(task, "fine_tuning")])}
            for task in dict.fromkeys(c.task for c in whole.cells)
            if (task, "cqd") in by_cell and (task, "fine_tuning") in by_cell
        ]
        if whole.options.get("distillers"):
            extra["method_differences"] = method_differences(by_cell, whole.options["distillers"])
    if select:
        chosen = []
        for node in schedule.runs():
            if not node.run.select_from:
                continue
            record = read_run_json(out / node.key)
            entry = record.get("selection")
            if entry is None:
                rows = []
                for key in node.run.select_from:
                    candidate = read_run_json(out / key)
                    objective = candidate.get("objective") or {}
                    if candidate.get("status") == FINISHED:
                        rows.append({"run": key, **candidate_setting(objective), "val_accuracy": candidate.get("accuracy")})
                if not rows:
                    continue
                entry = {"candidates": rows, "chosen": None}
            chosen.append({"run": node.key, "task": node.run.task, "method": node.run.method, "seed": node.seed, **entry})
        extra["selection"] = chosen
    synthetic = bool(config.synthetic) or any(is_synthetic(catalog.variant_dir(v)) for v in whole.variants())
    return write_results(out, table, synthetic, cells, extra, grid_settings(whole.a_cqd_start, catalog))
