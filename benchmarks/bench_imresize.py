"""Throughput of the low-resolution round trip 224 -> 50 -> 224 (bicubic, antialiased) on 64 RGB images.

Compares our MATLAB-exact `imresize` (numpy, per image) and `imresize_torch`
(one batch, CPU; CUDA too when present) with `cv2.resize` and
`F.interpolate(antialias=True)`, which are faster or not but give different
numbers: the table also shows each one's mean/max absolute difference (in
uint8 levels for uint8 runs) from the MATLAB-exact result. Writes
bench-out/bench_imresize.json. Ratios are only between rows of this run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.fileio import atomic_write_json  # noqa: E402
from cqd_port.imresize import imresize, imresize_torch  # noqa: E402

N, SIZE, SMALL, REPEATS = 64, 224, 50, 3


def _images() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    imgs = []
    for i in range(N):
        base = 127 + 100 * np.sin(xx / (2 + i % 7)) * np.cos(yy / (3 + i % 5))
        imgs.append(np.dstack([base, base.T, 255 - base]) + rng.normal(0, 8, (SIZE, SIZE, 3)))
    return np.clip(np.stack(imgs), 0, 255).astype(np.uint8)


def _best_time(fn) -> float:
    fn()  # warm-up: caches, allocator, thread pools
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    imgs = _images()
    batch_u8 = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    batch_f32 = batch_u8.float()

    def ours_numpy():
        return np.stack([imresize(imresize(im, size=[SMALL, SMALL]), size=[SIZE, SIZE]) for im in imgs])

    def ours_torch_u8():
        return imresize_torch(imresize_torch(batch_u8, [SMALL, SMALL]), [SIZE, SIZE])

    def ours_torch_f32():
        return imresize_torch(imresize_torch(batch_f32, [SMALL, SMALL]), [SIZE, SIZE])

    def cv2_cubic():
        small = [cv2.resize(im, (SMALL, SMALL), interpolation=cv2.INTER_CUBIC) for im in imgs]
        return np.stack([cv2.resize(s, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for s in small])

    def cv2_area_cubic():
        small = [cv2.resize(im, (SMALL, SMALL), interpolation=cv2.INTER_AREA) for im in imgs]
        return np.stack([cv2.resize(s, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for s in small])

    def interpolate_f32():
        small = F.interpolate(batch_f32, size=(SMALL, SMALL), mode="bicubic", antialias=True, align_corners=False)
        return F.interpolate(small, size=(SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)

    def interpolate_u8():
        small = F.interpolate(batch_u8, size=(SMALL, SMALL), mode="bicubic", antialias=True, align_corners=False)
        return F.interpolate(small, size=(SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)

    def as_nhwc(x) -> np.ndarray:
        return x.permute(0, 2, 3, 1).numpy() if isinstance(x, torch.Tensor) else x

    reference = ours_numpy().astype(np.float64)  # MATLAB-exact uint8 round trip
    ref_f64 = np.stack(
        [imresize(imresize(im.astype(np.float64), size=[SMALL, SMALL]), size=[SIZE, SIZE]) for im in imgs]
    )  # MATLAB-exact double round trip (for the float rows)

    rows = [
        ("ours numpy (uint8, per image)", ours_numpy, reference),
        ("ours torch CPU (uint8 batch)", ours_torch_u8, reference),
        ("ours torch CPU (float32 batch)", ours_torch_f32, ref_f64),
        ("cv2.resize INTER_CUBIC (uint8)", cv2_cubic, reference),
        ("cv2.resize INTER_AREA + INTER_CUBIC (uint8)", cv2_area_cubic, reference),
        ("F.interpolate bicubic antialias (float32)", interpolate_f32, ref_f64),
        ("F.interpolate bicubic antialias (uint8)", interpolate_u8, reference),
    ]
    if torch.cuda.is_available():
        gpu_f32, gpu_u8 = batch_f32.cuda(), batch_u8.cuda()

        def ours_cuda_f32():
            out = imresize_torch(imresize_torch(gpu_f32, [SMALL, SMALL]), [SIZE, SIZE])
            torch.cuda.synchronize()
            return out.cpu()

        def ours_cuda_u8():
            out = imresize_torch(imresize_torch(gpu_u8, [SMALL, SMALL]), [SIZE, SIZE])
            torch.cuda.synchronize()
            return out.cpu()

        rows += [("ours torch CUDA (float32 batch)", ours_cuda_f32, ref_f64), ("ours torch CUDA (uint8 batch)", ours_cuda_u8, reference)]

    results = []
    for name, fn, ref in rows:
        seconds = _best_time(fn)
        diff = np.abs(as_nhwc(fn()).astype(np.float64) - ref)
        results.append(
            dict(name=name, seconds=seconds, images_per_s=N / seconds, mean_abs_diff=float(diff.mean()), max_abs_diff=float(diff.max()))
        )
    base = results[0]["images_per_s"]
    print(f"224 -> 50 -> 224 bicubic antialiased, {N} RGB images, torch threads={torch.get_num_threads()}")
    print(f"{'method':<46} {'images/s':>10} {'vs numpy':>9} {'mean|d|':>9} {'max|d|':>9}")
    for r in results:
        r["ratio_vs_numpy"] = r["images_per_s"] / base
        print(f"{r['name']:<46} {r['images_per_s']:>10.1f} {r['ratio_vs_numpy']:>8.2f}x {r['mean_abs_diff']:>9.4f} {r['max_abs_diff']:>9.4f}")
    print("|d|: difference from the MATLAB-exact result (uint8 levels for uint8 rows, float64 reference for float rows)")
    atomic_write_json(
        ROOT / "bench-out" / "bench_imresize.json",
        dict(benchmark="imresize", images=N, size=SIZE, small=SMALL, device="cuda" if torch.cuda.is_available() else "cpu", rows=results),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
