"""Training step time per distillation method, with f's targets cached or recomputed, and the target sizes.

f and g are VGG-Ms (`vgg_m_specs`, 200 classes, dropout 0.5, random
weights; `--width` scales the channels) on 224 x 224 inputs. For each method
(`softmaxlog`, CQD's `kd` with cached logits, and FitNets / AT / SP / RKD /
DKD on the layers below) the script times `train_step` (train-mode forward
with hooks, the objective, backward, MatConvNet SGD update, the distiller's
connector included) with f's targets gathered from a cached table, and for
FitNets also recomputed by f per batch (what a target above the cache
budget costs). It also prints what caching each layer of f would take for
CUB's 5994 training images (`TARGET_CACHE_BUDGET` decides). Medians of
`--steps` steps after one warm-up; writes `bench-out/bench_distill.json`.
Ratios are only meaningful within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.data.store import ImageStore  # noqa: E402
from cqd_port.fileio import atomic_write_json, format_bytes  # noqa: E402
from cqd_port.models.features import LOGITS  # noqa: E402
from cqd_port.models.network import SimpleNetwork  # noqa: E402
from cqd_port.models.vgg import init_state, vgg_m_specs  # noqa: E402
from cqd_port.train.device import configure_determinism, select_device  # noqa: E402
from cqd_port.train.distill_spec import DistillSpec  # noqa: E402
from cqd_port.train.distillers import PARAMETER_PREFIX, build_distiller  # noqa: E402
from cqd_port.train.objective import Objective  # noqa: E402
from cqd_port.train.sgd import MatConvNetSGD, cqd_multipliers  # noqa: E402
from cqd_port.train.teacher import TARGET_CACHE_BUDGET, target_bytes, teacher_targets  # noqa: E402
from cqd_port.train.trainer import train_step  # noqa: E402

CUB_TRAIN_IMAGES = 5994
METHODS = {
    "softmaxlog": None,
    "kd": DistillSpec("kd", 200.0),
    "fitnets": DistillSpec("fitnets", 1e-3, teacher_layer="conv5", student_layer="conv5"),
    "at": DistillSpec("at", 1000.0, teacher_layer="relu5", student_layer="relu5", attention="code"),
    "sp": DistillSpec("sp", 3000.0, teacher_layer="fc7", student_layer="fc7"),
    "rkd": DistillSpec("rkd", 1.0, teacher_layer="fc7", student_layer="fc7"),
    "dkd": DistillSpec("dkd", 1.0),
}


def vggm(width: float, seed: int) -> SimpleNetwork:
    specs = vgg_m_specs(num_classes=200, width=width, input_size=224, dropout=0.5, softmax=False)
    return SimpleNetwork(specs, init_state(specs, seed=seed, method="xavierimproved"))


def time_method(name: str, width: float, batch: int, steps: int, device: torch.device, live: bool) -> float:
    spec = METHODS[name]
    g = vggm(width, 0).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=generator) * 50
    labels = torch.randint(0, 200, (batch,), generator=generator)
    store = ImageStore(images, labels).to(device)
    index = torch.arange(batch, device=device)
    objective = Objective("softmaxlog") if spec is None else Objective.for_method(spec)
    teacher_logits = targets = distiller = None
    named = list(g.named_parameters())
    if spec is not None:
        f = vggm(width, 1)
        layers = spec.teacher_layers
        found = teacher_targets(f, ImageStore(images, labels), layers, None, budget=0 if live else TARGET_CACHE_BUDGET, device=device)
        targets = found.to(device)
        if spec.method == "kd":
            teacher_logits = targets.batch(index)[LOGITS]
        else:
            distiller = build_distiller(spec, g, store.batch([0])[0], found.item_shapes, seed=0).to(device)
            named += list(distiller.named_parameters(prefix=PARAMETER_PREFIX))
    optimizer = MatConvNetSGD(named, 0.9, 5e-4, cqd_multipliers([n for n, _ in g.named_parameters()]))
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        inputs, y = store.batch(index)
        batch_targets = targets.batch(index) if distiller is not None else None
        out = train_step(g, optimizer, objective, inputs, y, teacher_logits, 1e-6, distiller, batch_targets)
        float(out.total)  # wait for the step
        if i > 0:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    configure_determinism(False, device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; VGG-M width {args.width}, batch {args.batch}, 224x224")
    rows = []
    f = vggm(args.width, 1)
    probe = f(torch.zeros(1, 3, 224, 224), return_all=True)
    print(f"{'f layer':<8} {'per image':>14} {'CUB table':>10}  ({format_bytes(TARGET_CACHE_BUDGET)} budget)")
    for layer in ("conv5", "relu5", "pool5", "fc6", "fc7", "fc8"):
        shape = tuple(probe[layer].shape[1:])
        size = target_bytes({layer: shape}, CUB_TRAIN_IMAGES)
        verdict = "cached" if size <= TARGET_CACHE_BUDGET else "recomputed"
        print(f"{layer:<8} {'x'.join(map(str, shape)):>14} {format_bytes(size):>10}  {verdict}")
        rows.append({"layer": layer, "shape": list(shape), "cub_table_bytes": size, "cached": size <= TARGET_CACHE_BUDGET})
    print(f"{'method':<10} {'targets':<10} {'s/step':>8} {'img/s':>8} {'vs softmaxlog':>14}")
    base = None
    for name in METHODS:
        for live in ((False, True) if name == "fitnets" else (False,)):
            sec = time_method(name, args.width, args.batch, args.steps, device, live)
            base = sec if base is None else base
            targets = "-" if name == "softmaxlog" else ("recomputed" if live else "cached")
            print(f"{name:<10} {targets:<10} {sec:>8.3f} {args.batch / sec:>8.1f} {sec / base:>13.2f}x", flush=True)
            rows.append({"method": name, "targets": targets, "seconds_per_step": sec, "images_per_second": args.batch / sec, "relative": sec / base})
    out = ROOT / "bench-out" / "bench_distill.json"
    atomic_write_json(out, {"benchmark": "distill", "device": str(device), "width": args.width, "batch": args.batch, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
