"""MATLAB semantics the released code relies on, in one place.

* `matlab_round` / `round_half_away`: MATLAB's `round` sends halves away from
  zero; Python's `round` and `np.round` send them to the even neighbour.
* `colon(start, step, stop)`: MATLAB's `start:step:stop` for doubles, element
  for element (not `numpy.arange`).
* `matlab_uint8` / `round_saturate`: MATLAB's `uint8(x)` of a real array
  rounds half away from zero and saturates; numpy's `astype(np.uint8)`
  truncates and wraps around.

Every stage that needs one of these imports it from here (records, readers,
degradations, imresize, the TPS warp, splits, the learning-rate schedules).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["matlab_round", "round_half_away", "colon", "round_saturate", "matlab_uint8"]

_EPS = 2.220446049250313e-16


def matlab_round(value: float) -> int:
    """MATLAB's `round` of a scalar: halves away from zero (Python's `round` goes to even)."""
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB's `round` of an array, elementwise (np.round would send halves to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def colon(start: float, step: float, stop: float) -> list[float]:
    """MATLAB's `start:step:stop` for doubles, element for element.

    MATLAB does not accumulate `start + step + step ...`: it counts the
    intervals `n` with a tolerance of 2 eps, snaps the last element onto
    `stop` when it lies within that tolerance, fills the first half as
    `start + k*step` and the second half as `stop - k*step`, and puts the
    exact midpoint `(start+stop)/2` in the middle when `n` is even (the
    algorithm of MathWorks' `colonop.m`, with MATLAB's half-away-from-zero
    `round`). `numpy.arange` instead returns `start + k*step` throughout and
    excludes `stop`.
    """
    if step == 0 or (start < stop and step < 0) or (stop < start and step > 0):
        return []
    tol = 2.0 * _EPS * max(abs(start), abs(stop))
    sig = 1.0 if step > 0 else -1.0
    n = matlab_round((stop - start) / step)
    if sig * (start + n * step - stop) > tol:
        n -= 1
    last = start + n * step
    if sig * (last - stop) > -tol:
        last = stop
    values = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        values[k] = start + k * step
        values[n - k] = last - k * step
    if n % 2 == 0:
        values[n // 2] = (start + last) / 2.0
    return values


def round_saturate(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """MATLAB's conversion of doubles to an unsigned integer range [lo, hi] >= 0, still as floats.

    `floor(x + 0.5)` is MATLAB's half-away-from-zero rounding for x >= -0.5,
    and every x below that saturates to `lo` (>= 0) either way. A numpy array
    or a torch tensor (imresize_torch), returned as the same kind.
    """
    if hasattr(x, "clamp"):  # torch.Tensor, without importing torch here
        return (x + 0.5).floor().clamp(lo, hi)
    return np.clip(np.floor(x + 0.5), lo, hi)


def matlab_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's `uint8(x)` of a real array: round half away from zero, saturate to [0, 255]."""
    return round_saturate(np.asarray(x), 0.0, 255.0).astype(np.uint8)
