"""The learning-rate schedules the released CQD code used, one value per epoch.

CUB:  [0.0005 x5, 0.0005:-0.00005:0.0001 (9 values), 0.0001 x10, 0.00005 x10]
CARS: [0.001 x5,  0.001:-0.0001:0.0001 (10 values),  0.0001 x10, 0.00005 x10]

`cnn_train_dag` uses `opts.learningRate(min(epoch, numel(opts.learningRate)))`,
so a run longer than the schedule keeps its last value (`learning_rate`).
The paper trains 30 epochs, i.e. it never reaches the end of either list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cqd_port.matlab import colon as matlab_colon
from cqd_port.errors import CqdError

Schedule = tuple[float, ...]


CUB_SCHEDULE: Schedule = tuple([0.0005] * 5 + matlab_colon(0.0005, -0.00005, 0.0001) + [0.0001] * 10 + [0.00005] * 10)
CARS_SCHEDULE: Schedule = tuple([0.001] * 5 + matlab_colon(0.001, -0.0001, 0.0001) + [0.0001] * 10 + [0.00005] * 10)

SCHEDULES: dict[str, Schedule] = {"cub": CUB_SCHEDULE, "cars": CARS_SCHEDULE}


def get_schedule(name: str) -> Schedule:
    """A released schedule by dataset name (`cub` or `cars`)."""
    try:
        return SCHEDULES[name.lower()]
    except KeyError:
        raise CqdError(f"unknown learning-rate schedule '{name}' (known: {', '.join(SCHEDULES)})") from None


def learning_rate(schedule: Sequence[float], epoch: int) -> float:
    """`opts.learningRate(min(epoch, numel(opts.learningRate)))` for a 1-based epoch."""
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    if not schedule:
        raise ValueError("empty learning-rate schedule")
    return float(schedule[min(epoch, len(schedule)) - 1])


def shorten_schedule(schedule: Sequence[float], epochs: int, scale: float = 1.0) -> Schedule:
    """The schedule's first `span` entries squeezed into `epochs` epochs, times `scale`.

    For the short demo: `span` is the part a full run visits (30 epochs of the
    paper, or the whole list if shorter), sampled at `epochs` evenly spaced
    points that keep its first and last values, so a few epochs still go from
    the initial rate down to the final one.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    span = list(schedule[: min(30, len(schedule))])
    if epochs == 1:
        picked = [span[0]]
    else:
        picked = [span[round(i * (len(span) - 1) / (epochs - 1))] for i in range(epochs)]
    return tuple(float(v) * scale for v in picked)


def validate_schedule(schedule: Sequence[float]) -> Schedule:
    """A schedule as a tuple of floats; a `CqdError` for an empty or negative one."""
    values = tuple(float(v) for v in schedule)
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise CqdError(f"learning-rate schedule {list(values)} must be a non-empty list of non-negative numbers")
    return values
