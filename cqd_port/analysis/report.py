"""`cqd-port report`: figures remade from a results folder, never from live objects.

Reads `<results>/results.json` (Table 1 or 2 cells, validated by
`cqd_port.experiments.results.load_results`) and each run's
`<results>/<task>/<method>/history.json`, and writes

* `table<N>_bars.png`: every cell against the paper's number, grouped by task;
* `curves_<task>.png`: the training curves of a task's methods overlaid
  (objective and top-1 error, train and test), for the task asked for or for
  every task with at least one history file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cqd_port.analysis import default_output
from cqd_port.errors import CqdError

SPLITS = ("train", "test")
METRICS = ("objective", "top1err")
# history.json spellings accepted for each split and metric (MatConvNet's `stats` uses train/val, objective/top1err).
_SPLIT_ALIASES = {"train": ("train",), "test": ("test", "val", "validation")}
_METRIC_ALIASES = {
    "objective": ("objective", "loss", "obj"),
    "top1err": ("top1err", "top1_err", "top1_error", "top1", "error"),
}

History = dict[str, dict[str, list[float]]]  # split -> metric -> per-epoch values
EPOCH = "epoch"  # history[split][EPOCH]: the epoch numbers of that split's values, where history.json gives them
# (a run scored on the test set after its last epoch only, as the demo's, has one test value, at that epoch)


@dataclass
class ReportConfig:
    results_dir: Path
    out: Path | None = None  # default: <results_dir>/figures
    task: str | None = None  # None: curves for every task that has history files


@dataclass
class ReportResult:
    bars_path: Path
    curve_paths: dict[str, Path] = field(default_factory=dict)
    missing_histories: list[str] = field(default_factory=list)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list) and len(value) == 1:
        return _number(value[0])
    return None


def _metric_of(entry: Mapping[str, Any], metric: str) -> float | None:
    for alias in _METRIC_ALIASES[metric]:
        if alias in entry:
            return _number(entry[alias])
    return None


def _series_from_epochs(epochs: list[Any], source: str) -> History:
    """Per-epoch entries -> split -> metric -> list. Entries nest splits ({"train": {...}}) or flatten them ("train_objective")."""
    history: History = {s: {m: [] for m in METRICS} for s in SPLITS}
    for number, entry in enumerate(epochs, start=1):
        if not isinstance(entry, Mapping):
            raise CqdError(f"{source}: epoch {number} is not an object; rewrite it by rerunning the run")
        for split in SPLITS:
            nested = next((entry[a] for a in _SPLIT_ALIASES[split] if isinstance(entry.get(a), Mapping)), None)
            found = False
            for metric in METRICS:
                value = None
                if nested is not None:
                    value = _metric_of(nested, metric)
                if value is None:
                    for split_alias in _SPLIT_ALIASES[split]:
                        flat = {k[len(split_alias) + 1 :]: v for k, v in entry.items() if k.startswith(split_alias + "_")}
                        value = _metric_of(flat, metric)
                        if value is not None:
                            break
                if value is not None:
                    history[split][metric].append(value)
                    found = True
            epoch = _number(entry.get("epoch"))
            if found and epoch is not None:
                history[split].setdefault(EPOCH, []).append(epoch)
    return history


def _series_from_splits(data: Mapping[str, Any], source: str) -> History:
    """{"train": {...lists} or [...epochs], "test"/"val": ...} -> split -> metric -> list."""
    history: History = {s: {m: [] for m in METRICS} for s in SPLITS}
    for split in SPLITS:
        block = next((data[a] for a in _SPLIT_ALIASES[split] if a in data), None)
        if block is None:
            continue
        if isinstance(block, list):  # MatConvNet stats: one struct per epoch
            for metric in METRICS:
                history[split][metric] = [v for v in (_metric_of(e, metric) for e in block if isinstance(e, Mapping)) if v is not None]
        elif isinstance(block, Mapping):
            for metric in METRICS:
                for alias in _METRIC_ALIASES[metric]:
                    if isinstance(block.get(alias), list):
                        history[split][metric] = [float(v) for v in block[alias] if _number(v) is not None]
                        break
        else:
            raise CqdError(f"{source}: '{split}' must be a list of epochs or an object of per-epoch lists")
    return history


def read_history(path: str | os.PathLike[str]) -> History:
    """Read a run's history.json into split -> metric -> per-epoch values.

    Accepts a list of per-epoch objects (optionally under "epochs"/"history"),
    each nesting "train"/"test" (or "val") objects or flattening them as
    "train_objective"; or an object of per-split blocks. Metrics: objective
    and top1err (fraction or percent, as written).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CqdError(f"{path}: no such history file; the run has not finished an epoch yet") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CqdError(f"{path}: not valid JSON ({exc}); rerun the run (it rewrites history.json)") from exc
    if isinstance(data, Mapping):
        for key in ("epochs", "history"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if isinstance(data, list):
        history = _series_from_epochs(data, str(path))
    elif isinstance(data, Mapping):
        history = _series_from_splits(data, str(path))
    else:
        raise CqdError(f"{path}: expected a list of epochs or an object; rerun the run to rewrite it")
    if not any(history[s][m] for s in SPLITS for m in METRICS):
        raise CqdError(f"{path}: no objective or top1err values found; rerun the run to rewrite history.json")
    return history


def recollect(results_dir: Path) -> bool:
    """Rewrite results.json/md from the run folders when the folder says how its grid was asked for (grid.json).

    So `report` after SLURM jobs finished (or while they run) shows what has
    finished, without the original command. False when there is no grid.json.
    """
    from cqd_port.experiments.collect import collect_results, read_grid_json

    grid = read_grid_json(results_dir)
    if grid is None:
        return False
    config = grid["config"]
    if Path(config.out).resolve() != Path(results_dir).resolve():  # the folder was moved: its runs are here now
        from dataclasses import replace

        config = replace(config, out=Path(results_dir))
    collect_results(grid["table"], grid["options"], grid["seeds"], grid["select"], config)
    return True


def make_report(config: ReportConfig) -> ReportResult:
    """Write the Table bar chart and the training-curve figures for a results folder."""
    from cqd_port.analysis.figures import results_bars, training_curves
    from cqd_port.experiments.paper import paper_table
    from cqd_port.experiments.results import RESULTS_JSON, load_results
    from cqd_port.train.trainer import HISTORY_NAME

    results_dir = Path(config.results_dir)
    if not results_dir.is_dir():
        raise CqdError(f"results folder {results_dir} does not exist; run `cqd-port reproduce` or `cqd-port demo` first")
    recollect(results_dir)
    if not (results_dir / RESULTS_JSON).is_file() and any((results_dir / n).is_file() for n in ("config.yaml", "demo-custom.yaml")):
        raise CqdError(
            f"{results_dir} is a `cqd-port train` / `demo --custom` folder: `report` draws the paper's Table 1/2 "
            f"(from `reproduce` or `demo`); here the accuracies are in {results_dir / 'results.md'} or each run's run.json, "
            "the training curves in each run folder's net-train.pdf"
        )
    results = load_results(results_dir / RESULTS_JSON)
    cells = results["cells"]
    if not cells:
        raise CqdError(f"{results_dir / RESULTS_JSON} has no cells; rerun `cqd-port reproduce` (or `demo`) to fill it")
    table = int(results["table"])
    synthetic = bool(results["synthetic"])
    # Tasks in the paper's column order.
    order = list(paper_table(table).tasks)
    present = {c["task"] for c in cells}
    tasks = [t for t in order if t in present] + sorted(present - set(order))
    cells = sorted(cells, key=lambda c: tasks.index(c["task"]))
    if config.task is not None and config.task not in present:
        raise CqdError(f"--task {config.task}: not in {results_dir / RESULTS_JSON} (tasks there: {', '.join(tasks)})")

    # Cells share runs (one A model serves upper bound, no adaptation, staged and the teacher of
    # several tasks): read each cell's history from the run that trained it.
    from cqd_port.experiments.plan import plan_grid

    run_of = {(c.task, c.method): c.run for c in plan_grid(table).cells}
    out = Path(config.out) if config.out is not None else default_output(results_dir, "figures")
    result = ReportResult(bars_path=results_bars(cells, out / f"table{table}_bars.png", table=table, synthetic=synthetic))
    for task in [config.task] if config.task is not None else tasks:
        histories: dict[str, History] = {}
        for cell in cells:
            if cell["task"] != task:
                continue
            path = results_dir / run_of.get((task, cell["method"]), f"{task}/{cell['method']}") / HISTORY_NAME
            if path.is_file():
                histories[cell["method"]] = read_history(path)
            else:
                result.missing_histories.append(f"{task}/{cell['method']}")
        if not histories:
            if config.task is not None:
                raise CqdError(
                    f"--task {task}: no run under {results_dir / task} has a {HISTORY_NAME} "
                    "(methods without training, or runs not started)"
                )
            continue
        result.curve_paths[task] = training_curves(histories, out / f"curves_{task}.png", task=task, synthetic=synthetic)
    return result
