"""Seconds per image of the release's thin-plate-spline distortion (`cqd_port.data.tps`).

`distort` = MATLAB bilinear resize to a 224 short side + `tpswarp` (the
spline at every source pixel, the forward map, median hole filling) + uint8,
on CUB-crop-like sizes; the warp alone on a 224 x 300 image, and its parts.
Best of 3 per image, one process, numpy; wall time and the process's CPU
time (the CPU time is the fairer figure on a shared, loaded machine).
Writes bench-out/bench_tps.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.data.tps import (  # noqa: E402
    control_points,
    distort,
    draw_offsets,
    resize_for_distortion,
    tps_coefficients,
    tps_map,
    tpswarp,
)
from cqd_port.fileio import atomic_write_json  # noqa: E402

SIZES = [(300, 400), (375, 500), (250, 180), (224, 224), (500, 333), (180, 260), (320, 240), (400, 400)]
REPEATS = 3


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    return np.clip(np.dstack([base, base.T[:h, :w] if h == w else base[::-1], 255 - base]) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def _best(fn) -> float:
    """The best wall time of REPEATS calls (its CPU time is kept in CPU_TIMES)."""
    fn()  # warm-up: the cached inverse of the spline system, allocator
    best, cpu = float("inf"), float("inf")
    for _ in range(REPEATS):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    CPU_TIMES.append(cpu)
    return best


CPU_TIMES: list[float] = []


def main() -> int:
    images = [_image(h, w, i) for i, (h, w) in enumerate(SIZES)]
    per_image = [_best(lambda im=im, i=i: distort(im, i)) for i, im in enumerate(images)]
    per_image_cpu = CPU_TIMES[:]
    resize = [_best(lambda im=im: resize_for_distortion(im)) for im in images]
    center = control_points()
    target = center + draw_offsets(0)
    img = _image(224, 300, 99)
    warp = _best(lambda: tpswarp(img, (224, 224), center, target))
    coef = tps_coefficients(center, target)
    spline = _best(lambda: tps_map(coef, center, np.arange(1, 225.0), np.arange(1, 301.0)))
    warp_cpu, spline_cpu = CPU_TIMES[-2], CPU_TIMES[-1]
    result = {
        "distort_cpu_seconds_per_image_mean": float(np.mean(per_image_cpu)),
        "tpswarp_224x300_cpu_seconds": warp_cpu,
        "spline_map_224x300_cpu_seconds": spline_cpu,
        "distort_seconds_per_image_mean": float(np.mean(per_image)),
        "distort_seconds_per_image": {f"{h}x{w}": t for (h, w), t in zip(SIZES, per_image)},
        "resize_seconds_per_image_mean": float(np.mean(resize)),
        "tpswarp_224x300_seconds": warp,
        "spline_map_224x300_seconds": spline,
    }
    print("| step | wall s | CPU s |")
    print("|---|---|---|")
    print(f"| distort (resize + tpswarp + uint8), mean over {len(SIZES)} CUB-like sizes | {result['distort_seconds_per_image_mean']:.4f} | {result['distort_cpu_seconds_per_image_mean']:.4f} |")
    print(f"| of which the bilinear resize (mean) | {result['resize_seconds_per_image_mean']:.4f} | |")
    print(f"| tpswarp alone, 224x300 | {warp:.4f} | {warp_cpu:.4f} |")
    print(f"| of which the spline at every source pixel | {spline:.4f} | {spline_cpu:.4f} |")
    for size, t in result["distort_seconds_per_image"].items():
        print(f"  {size}: {t:.4f} s")
    atomic_write_json(ROOT / "bench-out" / "bench_tps.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
