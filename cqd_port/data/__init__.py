"""Datasets: readers (CUB, Stanford Cars, synthetic), degradations, prepared copies, batches.

Modules: `records` (the index every stage shares), `cub`, `cars`, `splits`,
`synth`, `images` (reading files as MATLAB `imread`), `degrade`/`tps`/`sed`/`edges`
(the per-image degradations), `prepare` (degraded copies on disk), `batches`
(network inputs), `gallery` (Figure 3).
Import the modules themselves; this package keeps its import light.
"""

from pathlib import Path

# The one default folder of prepared data: where `prepare --out` writes and `reproduce --prepared` reads.
PREPARED_DEFAULT = Path("data/prepared")
