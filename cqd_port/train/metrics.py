"""Per-epoch metrics as training tools write them: `metrics.csv`, and TensorBoard events when installed.

Both are rewritten from the run's history (the records of `history.json`)
after every epoch, so they hold exactly its values, and a resumed run's files
equal an uninterrupted run's. A history record's numbers become columns
named by their path: `epoch`, `learning_rate`, `train_total`,
`train_objective` (the softmax-log term), `train_distill` (the distillation
term, before its weight), `train_top1err`, `train_num_images`,
`test_objective`, `test_top1err`, `test_accuracy`, `test_num_images`, `seconds`
(an epoch without a test has empty test cells). Floats are written with
Python's `repr`, which reads back to the same float.

TensorBoard (`pip install .[tensorboard]`) gets the same numbers as scalars
tagged `train/total`, `test/accuracy`, `learning_rate`, ... at step `epoch`,
in one event file `tensorboard/events.out.tfevents.cqd-port` of the run
folder, replaced atomically. Without the `tensorboard` package only the CSV is written.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cqd_port.fileio import atomic_path, atomic_write_text

METRICS_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_FILE = "events.out.tfevents.cqd-port"


def flatten_record(record: Mapping[str, Any], prefix: str = "") -> dict[str, float | int]:
    """A history record's numbers by path: {'epoch': 1, 'train_objective': ..., 'test_accuracy': ...}."""
    out: dict[str, float | int] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_record(value, f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def metrics_table(history: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, float | int]]]:
    """The columns (first-seen order over the history) and one row per epoch."""
    rows = [flatten_record(record) for record in history]
    columns = list(dict.fromkeys(name for row in rows for name in row))
    if "seconds" in columns:  # wall time last, as the tools print it
        columns.remove("seconds")
        columns.append("seconds")
    return columns, rows


def write_metrics(run_dir: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """`metrics.csv` (always) and the TensorBoard event file (when `tensorboard` is installed), atomically."""
    run_dir = Path(run_dir)
    columns, rows = metrics_table(history)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([repr(row[c]) if c in row else "" for c in columns])
    atomic_write_text(run_dir / METRICS_NAME, text.getvalue())
    if tensorboard_available():
        write_tensorboard(run_dir / TENSORBOARD_DIR / TENSORBOARD_FILE, columns, rows)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def write_tensorboard(target: Path, columns: Sequence[str], rows: Sequence[Mapping[str, float | int]]) -> None:
    """Every row's numbers as scalars (`train_top1err` -> tag `train/top1err`) at step `epoch`, into `target`."""
    from torch.utils.tensorboard import SummaryWriter

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tb-") as scratch:
        writer = SummaryWriter(log_dir=scratch)
        for row in rows:
            step = int(row.get("epoch", 0))
            for column in columns:
                if column != "epoch" and column in row:
                    tag = column.replace("_", "/", 1) if column.startswith(("train_", "test_")) else column
                    writer.add_scalar(tag, float(row[column]), global_step=step)
        writer.close()
        (written,) = [Path(scratch) / name for name in os.listdir(scratch) if "tfevents" in name]
        with atomic_path(target) as tmp:
            tmp.write_bytes(written.read_bytes())
