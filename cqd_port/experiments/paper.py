"""The paper's numbers (Tables 1 and 2), kept as data in `paper_tables.json`.

`cqd-port reproduce` and the demo print them beside their own; nothing here
computes anything, it only reads the transcription.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from cqd_port.errors import CqdError

TABLES_PATH = Path(__file__).with_name("paper_tables.json")


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables: task columns, method rows, accuracies in percent."""

    number: int
    caption: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    task_labels: dict[str, str]
    method_labels: dict[str, tuple[str, str, str]]  # method -> (description, train, test)
    accuracy: dict[str, dict[str, float | None]]  # method -> task -> percent or None
    notes: str

    def value(self, task: str, method: str) -> float | None:
        """The paper's accuracy (percent) for a cell, or None where the paper has none."""
        return self.accuracy.get(method, {}).get(task)


@functools.lru_cache(maxsize=None)
def paper_table(number: int) -> PaperTable:
    """Table 1 or Table 2 of the paper."""
    if number not in (1, 2):
        raise CqdError(f"--table {number}: the paper has Tables 1 and 2 only (use --table 1 or --table 2)")
    data = json.loads(TABLES_PATH.read_text(encoding="utf-8"))[f"table{number}"]
    return PaperTable(
        number=number,
        caption=data["caption"],
        tasks=tuple(data["tasks"]),
        methods=tuple(data["methods"]),
        task_labels=dict(data["task_labels"]),
        method_labels={k: tuple(v) for k, v in data["method_labels"].items()},
        accuracy={m: dict(row) for m, row in data["accuracy"].items()},
        notes=data.get("notes", ""),
    )
