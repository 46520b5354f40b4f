"""Peak memory of `convert-weights` on a full-size VGG-M model file.

Writes a synthetic `imagenet-vgg-m.mat` (the exact layer list, field set and
parameter shapes of MatConvNet's pretrained file, random float32 weights,
about 412 MB) into a temporary folder, converts it in a fresh subprocess, and
reports that process's peak resident memory (`ru_maxrss`) against the size
of the weights. A second subprocess that only imports torch and the library
gives the interpreter baseline. Target: peak - baseline <= 2 x weights.

Writes bench-out/bench_convert_memory.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.fileio import atomic_write_json  # noqa: E402

MB = 1024 * 1024

# imagenet-vgg-m.mat: (name, kernel, depth, count, stride, pad)
VGG_M_CONVS = [
    ("conv1", 7, 3, 96, 2, [0, 0, 0, 0]),
    ("conv2", 5, 96, 256, 2, [1, 1, 1, 1]),
    ("conv3", 3, 256, 512, 1, [1, 1, 1, 1]),
    ("conv4", 3, 512, 512, 1, [1, 1, 1, 1]),
    ("conv5", 3, 512, 512, 1, [1, 1, 1, 1]),
    ("fc6", 6, 512, 4096, 1, [0, 0, 0, 0]),
    ("fc7", 1, 4096, 4096, 1, [0, 0, 0, 0]),
    ("fc8", 1, 4096, 1000, 1, [0, 0, 0, 0]),
]
AFTER = {  # the layers that follow each conv in imagenet-vgg-m.mat
    "conv1": [("relu1", "relu"), ("norm1", "normalize"), ("pool1", "pool", [0, 0, 0, 0])],
    "conv2": [("relu2", "relu"), ("norm2", "normalize"), ("pool2", "pool", [0, 1, 0, 1])],
    "conv3": [("relu3", "relu")],
    "conv4": [("relu4", "relu")],
    "conv5": [("relu5", "relu"), ("pool5", "pool", [0, 0, 0, 0])],
    "fc6": [("relu6", "relu")],
    "fc7": [("relu7", "relu")],
    "fc8": [("prob", "softmax")],
}


def _cell(items: list) -> np.ndarray:
    array = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        array[0, i] = item
    return array


def write_synthetic_vggm(path: Path, seed: int = 0) -> int:
    """Write the synthetic model; returns the number of weight bytes in it."""
    import scipy.io

    rng = np.random.default_rng(seed)
    layers, weight_bytes = [], 0
    for name, k, depth, count, stride, pad in VGG_M_CONVS:
        filters = np.asfortranarray(rng.standard_normal((k, k, depth, count), dtype=np.float32) * 0.01)
        biases = rng.standard_normal((count, 1), dtype=np.float32)
        weight_bytes += filters.nbytes + biases.nbytes
        layers.append({
            "name": name, "type": "conv", "weights": _cell([filters, biases]),
            "size": np.array([[k, k, depth, count]], float), "pad": np.array([pad], float),
            "stride": np.array([[stride, stride]], float), "dilate": np.array([[1.0, 1.0]]),
            "opts": np.empty((0, 0), dtype=object), "precious": np.uint8(0),
        })
        for follow in AFTER[name]:
            if follow[1] == "relu":
                layers.append({"name": follow[0], "type": "relu", "leak": 0.0, "precious": np.uint8(0)})
            elif follow[1] == "normalize":
                layers.append({"name": follow[0], "type": "normalize", "param": np.array([[5, 2, 1e-4, 0.75]]), "precious": np.uint8(0)})
            elif follow[1] == "pool":
                layers.append({"name": follow[0], "type": "pool", "method": "max", "pool": np.array([[3.0, 3.0]]),
                               "stride": np.array([[2.0, 2.0]]), "pad": np.array([follow[2]], float),
                               "opts": np.empty((0, 0), dtype=object), "precious": np.uint8(0)})
            else:
                layers.append({"name": follow[0], "type": "softmax", "precious": np.uint8(0)})
    meta = {
        "inputs": {"name": "data", "size": np.array([[224.0, 224.0, 3.0, 10.0]])},
        "normalization": {
            "imageSize": np.array([[224.0, 224.0, 3.0]]),
            "averageImage": (rng.random((224, 224, 3), dtype=np.float32) * 255),
            "interpolation": "bilinear", "keepAspect": np.uint8(1),
            "border": np.array([[32.0, 32.0]]), "cropSize": 0.875,
        },
        "classes": {
            "name": _cell([f"n{i:08d}" for i in range(1000)]),
            "description": _cell([f"synthetic class {i}" for i in range(1000)]),
        },
    }
    scipy.io.savemat(path, {"layers": _cell(layers), "meta": meta}, do_compression=False)
    return weight_bytes


CHILD = r"""
import json, resource, sys, time
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes
import torch
from matconvnet_weights.convert import convert_weights
result = {"after_import_mb": rss_mb()}
if sys.argv[1] == "convert":
    start = time.perf_counter()
    def on_read(network):
        result["peak_after_read_mb"] = rss_mb()
        result["read_seconds"] = time.perf_counter() - start
    convert_weights(sys.argv[2], sys.argv[3], on_read=on_read)
    result["seconds"] = time.perf_counter() - start
    result["peak_mb"] = rss_mb()
print(json.dumps(result))
"""


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        mat = Path(tmp) / "imagenet-vgg-m.mat"
        start = time.perf_counter()
        weight_bytes = write_synthetic_vggm(mat)
        write_seconds = time.perf_counter() - start
        file_mb = mat.stat().st_size / MB
        baseline = _child("baseline")
        run = _child("convert", str(mat), str(Path(tmp) / "imagenet-vgg-m.pt"))
        checkpoint_mb = (Path(tmp) / "imagenet-vgg-m.pt").stat().st_size / MB
    weights_mb = weight_bytes / MB
    base_mb = baseline["after_import_mb"]
    copies = (run["peak_mb"] - base_mb) / weights_mb
    read_copies = (run["peak_after_read_mb"] - base_mb) / weights_mb
    rows = [
        ("weights (float32)", f"{weights_mb:.0f} MiB"),
        (".mat file", f"{file_mb:.0f} MiB (written in {write_seconds:.0f} s)"),
        ("checkpoint", f"{checkpoint_mb:.0f} MiB"),
        ("baseline RSS (python + torch + library)", f"{base_mb:.0f} MiB"),
        ("peak RSS after reading + converting", f"{run['peak_after_read_mb']:.0f} MiB ({read_copies:.2f} x weights above baseline)"),
        ("peak RSS of the whole conversion", f"{run['peak_mb']:.0f} MiB ({copies:.2f} x weights above baseline)"),
        ("conversion time", f"{run['seconds']:.1f} s (read {run['read_seconds']:.1f} s)"),
        ("target", "<= 2.00 x weights above baseline: " + ("met" if copies <= 2.0 else "MISSED")),
    ]
    width = max(len(r[0]) for r in rows)
    print("convert-weights memory, synthetic full-size imagenet-vgg-m.mat")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    atomic_write_json(ROOT / "bench-out" / "bench_convert_memory.json", {
        "benchmark": "convert_memory",
        "units": "MiB",
        "weights_mb": weights_mb,
        "mat_file_mb": file_mb,
        "checkpoint_mb": checkpoint_mb,
        "baseline_rss_mb": base_mb,
        "peak_rss_after_read_mb": run["peak_after_read_mb"],
        "peak_rss_mb": run["peak_mb"],
        "copies_above_baseline": copies,
        "copies_above_baseline_after_read": read_copies,
        "convert_seconds": run["seconds"],
        "read_seconds": run["read_seconds"],
        "target_copies": 2.0,
        "target_met": copies <= 2.0,
    })
    return 0 if copies <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
