"""The one range of random seeds every consumer accepts: integers 0 .. 2**32 - 1.

NumPy's generators refuse negative seeds and torch's refuse seeds beyond
64 bits (a bare ValueError or RuntimeError, a traceback for the user);
MATLAB's `rng` takes 0 .. 2**32 - 1. Every place that seeds a generator from
a user's value calls `check_seed` first, so a bad seed is one line naming
where it came from.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from cqd_port.errors import CqdError

__all__ = ["SEED_MAX", "check_seed"]

SEED_MAX = 2**32 - 1
SEED_SOURCES = "train.seed in a train config, --seed/--seeds of the command"


def check_seed(seed: Any, source: str = SEED_SOURCES) -> int:
    """`seed` as an int when it is a whole number in 0..SEED_MAX; else a one-line CqdError naming `source`."""
    whole = isinstance(seed, numbers.Integral) or (isinstance(seed, float) and math.isfinite(seed) and seed.is_integer())
    if isinstance(seed, bool) or not whole or not 0 <= int(seed) <= SEED_MAX:
        raise CqdError(f"seed {seed!r} is out of range ({source}); use a whole number from 0 to {SEED_MAX}")
    return int(seed)
