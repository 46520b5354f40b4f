"""The real trainer's images/s over the model alone, on the same network and batch.

`model only`: `train_step` (train-mode forward, backward, MatConvNet SGD)
repeated on one batch already on the device as float32: what the network
costs. `end to end`: one epoch of `cqd_port.train.trainer.train` on an
`ImageStore` of uint8 224x224 images (as a degraded variant is stored) with
the model's full average image subtracted per batch, a CQD objective with
cached teacher logits, shuffling, the per-step accumulators and progress:
what a run costs, from the epoch's own clock (the end-of-epoch checkpoint,
written once per epoch of thousands of images in a real run, is timed
apart). Both are measured alternately, best of `--repeats`; the ratio is
only quoted within one run.

Cases: full-width VGG-M at batch 16 and the demo's reduced VGG-M (width
0.25, 64x64 input, batch 32). Writes `benchmarks/results/train_pipeline.json`.
`measure_pipeline` is shared with `gpu_check.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.data.store import ImageStore  # noqa: E402
from cqd_port.fileio import atomic_write_json  # noqa: E402
from cqd_port.models.network import SimpleNetwork  # noqa: E402
from cqd_port.models.vgg import init_state, vgg_m_specs  # noqa: E402
from cqd_port.train.device import configure_determinism, select_device  # noqa: E402
from cqd_port.train.evaluate import evaluate  # noqa: E402
from cqd_port.train.objective import Objective  # noqa: E402
from cqd_port.train.sgd import MatConvNetSGD, cqd_multipliers  # noqa: E402
from cqd_port.train.trainer import TrainConfig, train, train_step  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_pipeline.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_store(n: int, size: int, num_classes: int, seed: int = 0, full_average: bool = True) -> ImageStore:
    """n random uint8 images as a degraded variant is stored, with a full average image (imagenet-vgg-m's kind)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    average = (torch.rand(size, size, 3, generator=g) * 40 + 100).numpy() if full_average else None
    return ImageStore(images, labels, average)


def measure_pipeline(
    specs: list,
    batch: int,
    steps: int,
    device: str | torch.device = "cpu",
    tf32: bool = False,
    repeats: int = 2,
    input_size: int = 224,
    num_classes: int = 200,
    test_images: int = 0,
    train_images: int | None = None,
) -> dict[str, Any]:
    """images/s of `train_step` on a fixed batch and of the trainer's epoch on a store (same network, batch)."""
    device = select_device(str(device))
    configure_determinism(tf32, device)
    n = train_images if train_images is not None else batch * steps
    store = synthetic_store(n, input_size, num_classes)
    test_store = synthetic_store(test_images, input_size, num_classes, seed=1) if test_images else None
    teacher = torch.randn(n, num_classes, generator=torch.Generator().manual_seed(2))
    objective = Objective("cqd", 200.0, 10.0)
    state = init_state(specs, seed=0)
    multipliers = cqd_multipliers(list(state))
    on_device = store.to(device)
    x, y = on_device.batch(torch.arange(batch))
    t = teacher[:batch].to(device)

    model_only, end_to_end, eval_ips, after_epoch_s, epoch_wall = [], [], [], [], []
    for _ in range(repeats):
        model = SimpleNetwork(specs, {k: v.clone() for k, v in state.items()}).to(device)
        optimizer = MatConvNetSGD(model.named_parameters(), multipliers=multipliers)
        train_step(model, optimizer, objective, x, y, t, 1e-6)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(model, optimizer, objective, x, y, t, 1e-6)
        _sync(device)
        model_only.append(batch * steps / (time.perf_counter() - start))

        model = SimpleNetwork(specs, {k: v.clone() for k, v in state.items()})
        config = TrainConfig(epochs=1, batch_size=batch, schedule=(1e-6,), device=str(device), plot=False, tf32=tf32)
        with tempfile.TemporaryDirectory() as run_dir:
            started = time.perf_counter()
            result = train(model, store, test_store, config, objective, run_dir, teacher, multipliers, progress=False)
            total = time.perf_counter() - started
        record = result.history[-1]
        end_to_end.append(record["train"]["num_images"] / record["seconds"])
        after_epoch_s.append(total - record["seconds"])  # test pass (if any) and the checkpoint
        epoch_wall.append(total)
        if test_store is not None:
            _sync(device)
            started = time.perf_counter()
            evaluate(model, test_store, batch_size=batch, device=device, tf32=tf32)
            eval_ips.append(test_images / (time.perf_counter() - started))
    out = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "batch": batch,
        "train_images": n,
        "tf32": tf32,
        "end_to_end_images_per_s": max(end_to_end),
        "model_only_images_per_s": max(model_only),
        "end_to_end_over_model_only": max(end_to_end) / max(model_only),
        "after_epoch_seconds": min(after_epoch_s),
        "epoch_wall_seconds": min(epoch_wall),
        "repeats": repeats,
    }
    if eval_ips:
        out["test_images"] = test_images
        out["eval_images_per_s"] = max(eval_ips)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cases = []
    full = vgg_m_specs(num_classes=200, width=1.0, input_size=224, dropout=0.5, softmax=False)
    cases.append({"network": "vgg-m full width, 224x224", **measure_pipeline(full, 16, 3, args.device, repeats=args.repeats)})
    reduced = vgg_m_specs(num_classes=12, width=0.25, input_size=64, dropout=0.5, softmax=False)
    cases.append(
        {"network": "vgg-m width 0.25, 64x64 (the demo's)", **measure_pipeline(reduced, 32, 8, args.device, repeats=args.repeats, input_size=64, num_classes=12)}
    )
    for case in cases:
        print(
            f"{case['network']:40s} batch {case['batch']:3d}: end-to-end {case['end_to_end_images_per_s']:8.1f} img/s, "
            f"model only {case['model_only_images_per_s']:8.1f} img/s, ratio {case['end_to_end_over_model_only']:.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"cases": cases, "torch": torch.__version__, "threads": torch.get_num_threads()})
    print(json.dumps({"written": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
