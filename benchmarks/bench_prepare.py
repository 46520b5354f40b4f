"""`prepare` throughput: images per second for each degradation, 2 worker processes.

Draws a SYNTHETIC birds dataset (CUB layout, 224-pixel-high images) into a
temporary folder and prepares every degradation that needs no external model
(`edges` and `edges_opencv` need a SED model file and are skipped;
`bench_sed.py` times SED; `edges_sobel` stands for the edge maps) in-process (`workers=0`) and with `workers=2`. Figures
include worker start-up, per-process caches (resize weights, the TPS
operator) and JPEG writing; they depend on the machine's load.

Writes bench-out/bench_prepare.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.data.degrade import DEGRADATIONS, DegradationConfig  # noqa: E402
from cqd_port.data.prepare import prepare_dataset  # noqa: E402
from cqd_port.data.synth import make_synthetic_dataset  # noqa: E402
from cqd_port.fileio import atomic_write_json  # noqa: E402

CLASSES, PER_CLASS = 20, 8  # 160 images
WORKERS = 2


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data = make_synthetic_dataset(Path(tmp) / "birds", classes=CLASSES, train_per_class=PER_CLASS - 2, test_per_class=2, size=224)
        synth_seconds = time.perf_counter() - started
        images = CLASSES * PER_CLASS
        rows.append({"step": "synth (drawing + JPEG q95)", "workers": 0, "images": images, "seconds": synth_seconds})
        runs = [(name, workers) for name in DEGRADATIONS if name not in ("edges", "edges_opencv") for workers in (0, WORKERS)]
        for name, workers in runs:
            out = Path(tmp) / f"out-w{workers}"
            started = time.perf_counter()
            prepare_dataset("cub", name, data, out, workers=workers, config=DegradationConfig(), progress=False)
            rows.append({"step": f"prepare {name}", "workers": workers, "images": images, "seconds": time.perf_counter() - started})
    for row in rows:
        row["images_per_second"] = row["images"] / row["seconds"]
    print(f"{'step':34s} {'workers':>7s} {'images':>6s} {'seconds':>8s} {'img/s':>7s}")
    for row in rows:
        print(f"{row['step']:34s} {row['workers']:7d} {row['images']:6d} {row['seconds']:8.2f} {row['images_per_second']:7.1f}")
    print("edges (SED) skipped: needs --sed-model; SYNTHETIC data; figures depend on machine load")
    out = ROOT / "bench-out" / "bench_prepare.json"
    atomic_write_json(out, {"benchmark": "prepare", "synthetic": True, "workers": WORKERS, "rows": rows,
                            "note": "edges (SED) skipped: needs a model file; timings include worker start-up"})  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
