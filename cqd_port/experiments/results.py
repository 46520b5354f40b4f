"""results.json and the Markdown table made from it.

`results.json` is the one record of a grid's outcome:
`{"table": 1, "synthetic": false, "settings": {...}, "cells": [{"task", "method", "accuracy", "paper", "notes"}]}`
with accuracies in percent (`accuracy` null for a cell not run yet, `paper`
null where the paper has no number). `settings` (optional) records the
choices where the paper, the release and the specification differ
(`lowres_kernel`, `a_cqd_start`, ...); a cell's `notes` (optional, a list of
sentences) say where its setting is an interpretation, and results.md prints
them as numbered footnotes. Made from several seeds
(`cqd_port.experiments.collect`), a cell also has `values` (seed -> accuracy,
every one kept) and `std` (their standard deviation), `accuracy` being their
mean; the file then also has `seeds`, `differences` (per task, CQD minus
fine-tuning paired by seed, with a 95% interval) and `selection` (the lambda
and T chosen on validation, with every candidate's validation accuracy); with
later distillers (`--methods fitnets,...`) their rows after the paper's and
`method_differences` (per task and distiller, minus fine-tuning and minus CQD,
paired by seed, 95% interval, `tie` when it contains 0). Tables and figures are always made from
this file, never from live objects, so they can be remade without rerunning
anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cqd_port.errors import CqdError
from cqd_port.experiments.methods import DISTILLERS
from cqd_port.experiments.paper import paper_table
from cqd_port.fileio import atomic_write_json, atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CELL_KEYS = ("task", "method", "accuracy", "paper")
CELL_OPTIONAL = ("values", "std", "notes")
TOP_KEYS = ("table", "synthetic", "cells")
TOP_OPTIONAL = ("settings", "seeds", "differences", "selection", "method_differences")


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    accuracy: float | None  # percent, None when not run (the mean when several seeds)
    paper: float | None  # percent, None where the paper has no entry
    values: dict[int, float] | None = None  # seed -> accuracy (None: a single-seed table)
    std: float | None = None
    notes: tuple[str, ...] = ()  # where the cell's setting is an interpretation, one sentence each

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "method": self.method, "accuracy": self.accuracy, "paper": self.paper}
        if self.values is not None:
            out.update(values={str(k): v for k, v in sorted(self.values.items())}, std=self.std)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _is_percent(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 100.0


def validate_results(obj: Any, source: str = "results.json") -> dict[str, Any]:
    """Check `obj` against the results.json schema; CqdError naming the first problem."""
    if not isinstance(obj, dict) or not set(TOP_KEYS) <= set(obj) <= set(TOP_KEYS + TOP_OPTIONAL):
        raise CqdError(
            f"{source}: expected the keys table, synthetic, cells (and optionally {', '.join(TOP_OPTIONAL)}); rerun `cqd-port reproduce` to rewrite it"
        )
    settings = obj.get("settings", {})
    if not isinstance(settings, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool))) for k, v in settings.items()
    ):
        raise CqdError(f"{source}: 'settings' must map names to plain values")
    if obj["table"] not in (1, 2):
        raise CqdError(f"{source}: 'table' must be 1 or 2, got {obj['table']!r}")
    if not isinstance(obj["synthetic"], bool):
        raise CqdError(f"{source}: 'synthetic' must be true or false")
    if not isinstance(obj["cells"], list):
        raise CqdError(f"{source}: 'cells' must be a list")
    table = paper_table(obj["table"])
    seen = set()
    for i, cell in enumerate(obj["cells"]):
        if not isinstance(cell, dict) or not set(CELL_KEYS) <= set(cell) <= set(CELL_KEYS + CELL_OPTIONAL):
            raise CqdError(f"{source}: cell {i} must have the keys {', '.join(CELL_KEYS)} (and optionally {', '.join(CELL_OPTIONAL)})")
        values = cell.get("values", {})
        if not isinstance(values, dict) or not all(_is_percent(v) for v in values.values()):
            raise CqdError(f"{source}: cell {i} 'values' must map seeds to percentages")
        notes = cell.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise CqdError(f"{source}: cell {i} 'notes' must be a list of sentences")
        if cell["task"] not in table.tasks:
            raise CqdError(f"{source}: cell {i} has unknown task {cell['task']!r} for Table {obj['table']}")
        if cell["method"] not in table.methods and cell["method"] not in DISTILLERS:
            raise CqdError(f"{source}: cell {i} has unknown method {cell['method']!r} for Table {obj['table']}")
        for key in ("accuracy", "paper"):
            if cell[key] is not None and not _is_percent(cell[key]):
                raise CqdError(f"{source}: cell {i} '{key}' must be a percentage in [0, 100] or null, got {cell[key]!r}")
        pair = (cell["task"], cell["method"])
        if pair in seen:
            raise CqdError(f"{source}: cell {cell['task']}/{cell['method']} appears twice")
        seen.add(pair)
    return obj


def results_object(
    table: int, synthetic: bool, cells: list[Cell], extra: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The results.json content for `cells` (validated); `extra`: seeds, differences, selection; `settings` recorded when given."""
    obj: dict[str, Any] = {"table": table, "synthetic": synthetic}
    if settings:
        obj["settings"] = dict(settings)
    obj["cells"] = [c.to_dict() for c in cells]
    obj.update(extra or {})
    return validate_results(obj)


def write_results(
    out_dir: str | Path,
    table: int,
    synthetic: bool,
    cells: list[Cell],
    extra: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write results.json, then results.md made from that file (both atomically)."""
    out_dir = Path(out_dir)
    json_path = out_dir / RESULTS_JSON
    atomic_write_json(json_path, results_object(table, synthetic, cells, extra, settings))
    md_path = out_dir / RESULTS_MD
    atomic_write_text(md_path, markdown_table(load_results(json_path)))
    return json_path, md_path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json."""
    path = Path(path)
    if not path.is_file():
        raise CqdError(f"{path}: no such results file; run `cqd-port reproduce` (or `cqd-port demo`) first")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CqdError(f"{path}: not valid JSON ({exc}); delete it and rerun `cqd-port reproduce` to rewrite it") from exc
    return validate_results(obj, str(path))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cell_text(cell: dict[str, Any] | None, footnotes: dict[str, int] | None = None) -> str:
    """'ours / paper (diff) [n]' for one cell of the Markdown table ('mean ± std (n)' over several seeds).

    The difference is that of the rounded numbers shown, so the cell's three
    numbers agree; [n] numbers its notes in `footnotes`.
    """
    if cell is None:
        return ""
    marks = ""
    if footnotes is not None and cell.get("notes"):
        marks = " " + "".join(f"[{footnotes.setdefault(n, len(footnotes) + 1)}]" for n in cell["notes"])
    ours, paper = cell["accuracy"], cell["paper"]
    values = cell.get("values") or {}
    if ours is None:
        text = "pending"
    elif len(values) > 1:
        text = f"**{ours:.1f} ± {cell.get('std') or 0.0:.1f}** (n={len(values)})"
    else:
        text = f"**{ours:.1f}**"
    if paper is not None:
        text += f" / {paper:.1f}"
        if ours is not None:
            text += f" ({round(ours, 1) - round(paper, 1):+.1f})"
    return text + marks


def _setting_text(candidate: dict[str, Any], method: str) -> str:
    """`lambda 50 T 10` (CQD), `weight 0.1` (a distiller without T), `weight 1 T 4` (DKD)."""
    name = "weight" if method in DISTILLERS else "lambda"
    if candidate.get("T") is None:
        return f"{name} {candidate['lambda']:g}"
    return f"{name} {candidate['lambda']:g} T {candidate['T']:g}"


def _method_difference_lines(results: dict[str, Any], task_labels: dict[str, str], labels: dict[str, tuple[str, str, str]]) -> list[str]:
    rows = [d for d in results.get("method_differences") or [] if d.get("n")]
    if not rows:
        return []
    lines = ["", "Distillers vs fine-tuning and vs CQD, paired by seed (mean, 95% t-interval; tie: the interval contains 0):", ""]
    for d in rows:
        interval = f" [{d['low']:+.1f}, {d['high']:+.1f}]" if d.get("low") is not None else " (one seed: no interval)"
        tie = " tie" if d.get("tie") else ""
        what = f"{labels[d['method']][0]} - {labels[d['versus']][0]}"
        lines.append(f"- {task_labels.get(d['task'], d['task'])}: {what} {d['mean']:+.1f}{interval}{tie}, n={d['n']}")
    return lines


def markdown_table(results: dict[str, Any]) -> str:
    """The table shaped like the paper's, each cell `ours / paper (ours - paper)`.

    Table 1: methods as rows (with the train/test domains), tasks as columns.
    Table 2: f -> g as rows, the three training/testing settings as columns.
    """
    table = paper_table(results["table"])
    by_key = {(c["task"], c["method"]): c for c in results["cells"]}
    tasks = [t for t in table.tasks if any(k[0] == t for k in by_key)]
    methods = [m for m in (*table.methods, *DISTILLERS) if any(k[1] == m for k in by_key)]
    labels = {**table.method_labels, **{d.method: (d.label, f"{d.method} (B, f on A)", "B") for d in DISTILLERS.values()}}
    lines = [f"# Table {table.number}: {table.caption}", ""]
    if results["synthetic"]:
        lines += [
            "**SYNTHETIC DATA**: these numbers come from generated images (`cqd-port synth` or the demo), "
            "not from CUB or Stanford Cars; the paper's numbers are shown only for the shape of the comparison.",
            "",
        ]
    seeds = results.get("seeds") or []
    if len(seeds) > 1:
        lines += [
            f"Each cell: **mean ± standard deviation** over seeds {', '.join(map(str, seeds))} / paper (mean - paper), "
            "per-image accuracy in percent; pending: not run yet; [n]: the footnote on its setting.",
            "",
        ]
    else:
        lines += ["Each cell: **ours** / paper (ours - paper), per-image accuracy in percent; pending: not run yet; [n]: the footnote on its setting.", ""]
    footnotes: dict[str, int] = {}
    if table.number == 1:
        header = ["Method", "Train", "Test", *[table.task_labels[t] for t in tasks]]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for m in methods:
            desc, train, test = labels[m]
            row = [desc, train, test, *[_cell_text(by_key.get((t, m)), footnotes) for t in tasks]]
            lines.append("| " + " | ".join(row) + " |")
    else:
        header = ["f -> g", *[" -> ".join(labels[m][1:]) for m in methods]]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for t in tasks:
            row = [table.task_labels[t], *[_cell_text(by_key.get((t, m)), footnotes) for m in methods]]
            lines.append("| " + " | ".join(row) + " |")
    differences = [d for d in results.get("differences") or [] if d.get("n")]
    if differences:
        lines += ["", "CQD - fine-tuning, paired by seed (mean, 95% t-interval over seeds):", ""]
        for d in differences:
            interval = f" [{d['low']:+.1f}, {d['high']:+.1f}]" if d.get("low") is not None else " (one seed: no interval)"
            lines.append(f"- {table.task_labels.get(d['task'], d['task'])}: {d['mean']:+.1f}{interval}, n={d['n']}")
    lines += _method_difference_lines(results, table.task_labels, labels)
    for entry in results.get("selection") or []:
        if entry is (results.get("selection") or [])[0]:
            lines += ["", "lambda and T chosen on a validation split of the training set (validation accuracy per candidate):", ""]
        tried = ", ".join(f"{_setting_text(c, entry['method'])}: {c['val_accuracy']:.1f}" for c in entry["candidates"] if c.get("val_accuracy") is not None)
        chosen = entry.get("chosen")
        pick = f" -> {_setting_text(chosen, entry['method']).replace(' T ', ', T ')}" if chosen else " (not all candidates finished)"
        lines.append(f"- {entry['task']} / {entry['method']} (seed {entry['seed']}): {tried}{pick}")
    if footnotes:
        lines += ["", "Settings that are an interpretation (the paper, the released code and the specification differ or are silent):", ""]
        lines += [f"[{number}] {text}" for text, number in footnotes.items()]
    if results.get("settings"):
        lines += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in results["settings"].items())]
    notes = table.notes
    if notes and "a_cqd" in notes and "a_cqd" not in methods:
        notes = ""  # the note explains the a_cqd row, absent here
    if notes:
        lines += ["", f"Note: {notes}"]
    return "\n".join(lines) + "\n"
