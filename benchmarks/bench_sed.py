"""Seconds per image of the Structured Edge Detector (`cqd_port.data.sed.edges_detect`).

Synthetic RGB images (smooth shapes on a textured background, seeded) of
300x200 and 500x375 pixels, the test forest `sed_model_synth.mat` from
`../shared/release-parity/sed` (8 trees, 4 evaluated; the BSDS model has
the same options), at the release's setting (sharpen 2) and without
sharpening (sharpen 0, the fastest). Best of REPEATS runs after a warm-up,
wall-clock and CPU time of this process (numpy runs on one core here, so
the CPU time shows the cost on an otherwise idle machine when others load
it). Also the stages of one sharpen-2 run. Writes bench-out/bench_sed.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.data import sed  # noqa: E402
from cqd_port.fileio import atomic_write_json  # noqa: E402

MODEL = ROOT.parent / "shared" / "release-parity" / "sed" / "sed_model_synth.mat"
SIZES = ((200, 300), (375, 500))  # (h, w): 300x200 and 500x375 images
REPEATS = 3


def synthetic_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    background = 110 + 40 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    img = np.dstack([background, background * 0.8 + 30, 200 - background * 0.5])
    img = np.ascontiguousarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
    for _ in range(12):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(w // 20, w // 5)), int(rng.integers(h // 20, h // 5)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return img


def _best(fn) -> tuple[float, float]:
    fn()
    wall = cpu = float("inf")
    for _ in range(REPEATS):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def _stages(image: np.ndarray, model: sed.SedModel) -> dict[str, float]:
    # CPU seconds of the stages of one sharpen-2 run (best of REPEATS): the channels, and the rest.
    padded = sed.edges_pad(image, int(model.opts["imWidth"]))
    channels = _best(lambda: sed.edges_channels(padded, model.opts))[1]
    plain = _best(lambda: sed.edges_detect(image, model, sharpen=0))[1]
    sharpened = _best(lambda: sed.edges_detect(image, model, sharpen=2))[1]
    return {
        "channels (edgesChns)": channels,
        "forest + plain edge map": plain - channels,
        "sharpening (sharpen 2 - sharpen 0)": sharpened - plain,
    }


def main() -> int:
    if not MODEL.is_file():
        print(f"SED model missing: {MODEL} (needs ../shared beside the checkout)", file=sys.stderr)
        return 1
    model = sed.read_sed_model(MODEL)
    rows = []
    print(f"{'image':>9} {'sharpen':>7} {'wall s':>8} {'cpu s':>8}")
    for h, w in SIZES:
        image = synthetic_image(h, w)
        for sharpen in (2, 0):
            wall, cpu = _best(lambda: sed.edges_detect(image, model, sharpen=sharpen, n_trees_eval=4))
            rows.append({"image": f"{w}x{h}", "sharpen": sharpen, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4)})
            print(f"{f'{w}x{h}':>9} {sharpen:>7} {wall:8.3f} {cpu:8.3f}")
    stages = _stages(synthetic_image(*SIZES[-1]), model)
    for name, seconds in stages.items():
        print(f"  500x375, CPU s, {name}: {seconds:.3f}")
    out = ROOT / "bench-out" / "bench_sed.json"
    atomic_write_json(out, {"rows": rows, "stages_500x375": stages, "repeats": REPEATS, "model": str(MODEL)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
