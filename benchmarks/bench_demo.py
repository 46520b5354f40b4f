"""The CPU demo end to end: wall time of `cqd-port demo` in a fresh folder, and training speed per method.

Runs `run_demo` with its default configuration (Table 1's whole grid on
synthetic data: data generation, stand-in pretraining, preparation of the
nine data variants, 44 runs) in a temporary folder, then reads every run's
run.json for its training throughput (images per second, as the grid ran it,
evaluation and checkpointing excluded) and seconds. Target: under 10 minutes
on 2 CPU cores. Prints the demo's table too.

Writes bench-out/bench_demo.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.fileio import atomic_write_json  # noqa: E402

TARGET_SECONDS = 600.0


def main() -> int:
    from cqd_port.experiments.demo import DemoConfig, run_demo

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        config = DemoConfig(out=Path(tmp) / "demo", progress=False)
        start = time.perf_counter()
        outcome = run_demo(config)
        wall = time.perf_counter() - start
        runs = {}
        for run_json in sorted(Path(config.out).glob("*/*/run.json")):
            record = json.loads(run_json.read_text())
            runs[record["key"]] = record
        results = json.loads(outcome.results_json.read_text())

    per_method: dict[str, dict] = {}
    for record in runs.values():
        entry = per_method.setdefault(record["method"], {"runs": 0, "seconds": [], "images_per_second": []})
        entry["runs"] += 1
        entry["seconds"].append(record.get("seconds", 0.0))
        if record.get("images_per_second"):
            entry["images_per_second"].append(record["images_per_second"])
    summary = {
        method: {
            "runs": e["runs"],
            "total_seconds": round(sum(e["seconds"]), 1),
            "median_train_images_per_second": round(statistics.median(e["images_per_second"]), 1) if e["images_per_second"] else None,
        }
        for method, e in per_method.items()
    }
    print(outcome.report)
    print()
    print(f"demo wall time: {wall:.1f} s ({wall / 60:.1f} min; target < {TARGET_SECONDS / 60:.0f} min) on {os.cpu_count()} CPU cores")
    print(f"{'method':<20} {'runs':>4} {'seconds':>9} {'train img/s':>12}")
    for method, s in summary.items():
        ips = "-" if s["median_train_images_per_second"] is None else f"{s['median_train_images_per_second']:.0f}"
        print(f"{method:<20} {s['runs']:>4} {s['total_seconds']:>9.1f} {ips:>12}")
    atomic_write_json(
        ROOT / "bench-out" / "bench_demo.json",
        {
            "wall_seconds": round(wall, 1),
            "target_seconds": TARGET_SECONDS,
            "within_target": wall < TARGET_SECONDS,
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": __import__("torch").get_num_threads(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()},
            "per_method": summary,
            "results": results,
            "note": "synthetic data; wall time depends on machine load",
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
