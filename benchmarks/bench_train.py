"""Training throughput on the CPU per objective, and what the teacher-logit cache saves.

For the tiny VGG-M of the parity data (`net_vggm_tiny.mat`, 224x224 input)
and a full-width VGG-M (`vgg_m_specs(width=1)`, 200 classes, dropout 0.5),
times `sgd_step` (train-mode forward, backward, MatConvNet SGD update) for:

- `softmaxlog`: fine-tuning / data augmentation / staged training;
- `cqd-cached`: CQD with the teacher's logits gathered from the cache;
- `cqd-live`: CQD running the teacher (same architecture, test mode) on the
  batch at every step, i.e. what training would cost without the cache.

The cache saves one teacher forward pass per training image per epoch:
`teacher forward seconds per image x training images`, with the forward
timed on its own (a difference of two noisy step times would be less
reliable); reported for CUB (5994 training images) and CARS (8144).
Runs with `cqd-port`'s CPU runtime settings (`cqd_port.cpuruntime`).
Writes `bench-out/bench_train.json`. Ratios are only meaningful within one run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.cpuruntime import tune_cpu_runtime  # noqa: E402

CPU_RUNTIME = tune_cpu_runtime()  # what `cqd-port` runs with (before torch loads libgomp)

import torch  # noqa: E402

from cqd_port.fileio import atomic_write_json  # noqa: E402
from cqd_port.models.network import SimpleNetwork  # noqa: E402
from cqd_port.train.objective import Objective  # noqa: E402
from cqd_port.train.sgd import MatConvNetSGD, cqd_multipliers  # noqa: E402
from cqd_port.train.trainer import sgd_step  # noqa: E402

SHARED = ROOT.parent / "shared"
TRAIN_IMAGES = {"cub": 5994, "cars": 8144}


def tiny_vggm() -> tuple[list, dict]:
    from matconvnet_weights.read import read_network

    net = read_network(SHARED / "parity" / "net_vggm_tiny.mat")
    specs = [s for s in net.specs if s.type != "softmax"]
    return specs, dict(net.state)


def full_vggm(num_classes: int = 200) -> tuple[list, dict]:
    from cqd_port.models.vgg import init_state, vgg_m_specs

    specs = vgg_m_specs(num_classes=num_classes, width=1.0, input_size=224, dropout=0.5, softmax=False)
    return specs, init_state(specs, seed=0, method="xavierimproved")


def time_steps(specs, state, mode: str, batch: int, steps: int) -> float:
    """Seconds per step (median over `steps` after two warm-up steps: the heap reaches its working size)."""
    model = SimpleNetwork(specs, state)
    names = [n for n, _ in model.named_parameters()]
    opt = MatConvNetSGD(model.named_parameters(), 0.9, 5e-4, cqd_multipliers(names))
    teacher = SimpleNetwork(specs, state).eval() if mode == "cqd-live" else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g) * 50
    k = int(state["fc8.weight"].shape[0])
    y = torch.randint(0, k, (batch,), generator=g)
    cached = torch.randn(batch, k, generator=g)
    objective = Objective("softmaxlog") if mode == "softmaxlog" else Objective("cqd", 200.0, 10.0)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        if mode == "softmaxlog":
            logits = None
        elif mode == "cqd-cached":
            logits = cached[torch.arange(batch)]  # the gather the trainer does
        else:
            with torch.no_grad():
                logits = teacher(x)
        sgd_step(model, opt, objective, x, y, logits, 1e-6)
        if i > 1:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def time_teacher_forward(specs, state, batch: int, steps: int) -> float:
    """Seconds per test-mode forward pass of a batch (median after one warm-up)."""
    teacher = SimpleNetwork(specs, state).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 50
    times = []
    with torch.no_grad():
        for i in range(steps + 1):
            t0 = time.perf_counter()
            teacher(x)
            if i > 0:
                times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    configs = [("vggm-tiny", tiny_vggm, 16, 6), ("vggm-full", full_vggm, 16, 6)]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU (measured while other jobs may share the machine)")
    print(f"{'network':<10} {'objective':<11} {'batch':>5} {'s/step':>8} {'img/s':>8}")
    for name, build, batch, steps in configs:
        specs, state = build()
        per_mode = {}
        for mode in ("softmaxlog", "cqd-cached", "cqd-live"):
            sec = time_steps(specs, state, mode, batch, steps)
            per_mode[mode] = sec
            rows.append({"network": name, "objective": mode, "batch": batch, "seconds_per_step": sec, "images_per_second": batch / sec})
            print(f"{name:<10} {mode:<11} {batch:>5} {sec:>8.3f} {batch / sec:>8.1f}", flush=True)
        forward = time_teacher_forward(specs, state, batch, steps)
        per_image = forward / batch
        print(f"{name:<10} teacher fwd  {batch:>5} {forward:>8.3f} {batch / forward:>8.1f}")
        rows.append({"network": name, "objective": "teacher-forward-only", "batch": batch, "seconds_per_step": forward, "images_per_second": batch / forward})
        for dataset, n in TRAIN_IMAGES.items():
            saved = per_image * n
            rows.append({"network": name, "teacher_cache_saves_seconds_per_epoch": saved, "dataset": dataset, "train_images": n})
            print(f"{name:<10} teacher cache saves {saved:8.1f} s per {dataset} epoch ({n} images)")
    atomic_write_json(ROOT / "bench-out" / "bench_train.json", {"benchmark": "train", "device": "cpu", "threads": torch.get_num_threads(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
