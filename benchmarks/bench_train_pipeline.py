"""The real trainer's steady-state images/s over the model alone, and its per-epoch fixed cost, in seconds.

`model only`: `train_step` (train-mode forward, backward, MatConvNet SGD)
repeated on one batch already on the device as float32, after one warm-up
step: what the network costs. `end to end`: `cqd_port.train.trainer.train`
for `--epochs` epochs of at least 20 steps on an `ImageStore` of uint8
images (as a degraded variant is stored) with the model's full average
image subtracted per batch, a CQD objective with cached teacher logits,
shuffling, the per-step accumulators: what a run costs. Its clock is the
trainer's own `on_step` callback (the device synchronised at each epoch's
first and last step only): the steady rate counts every epoch's steps 2..N
(the first step of an epoch, which follows the epoch boundary, and the
run's warm-up step are excluded on both sides), and the per-epoch fixed cost
is the time from the end of an epoch's last step to the next epoch's first
batch request (on a GPU: to the end of its first step, less one steady
step): the history and checkpoint, the shuffle, the momentum
reset, the accumulators, the end-of-epoch read. The checkpoint alone (the
same `save_training_checkpoint` and history write) and the shuffle and
momentum reset alone are timed apart, so the fixed cost without the
checkpoint is reported too (the boundary less the trainer's own checkpoint
write there, timed where it happens); `first_epoch_seconds` is from the `train` call to
the first epoch's last step (setup, the first step's allocations), less the
paired model-only steps run meanwhile.

Both sides are measured alternately in one run, `--repeats` times; the
headline pair is the repeat with the fastest model-only rate (the least
disturbed), every repeat's ratio is listed too; ratios are only quoted within one run, and the machine's load average
(`os.getloadavg()`) is recorded beside each case (the machine may be shared).

The process runs with `cqd-port`'s CPU runtime settings
(`cqd_port.cpuruntime.tune_cpu_runtime`, recorded in the JSON).

Cases: full-width VGG-M at batch 16 and the demo's reduced VGG-M (width
0.25, 64x64 input, batch 32). Writes `benchmarks/results/train_pipeline.json`.
`measure_pipeline` is shared with `gpu_check.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.cpuruntime import tune_cpu_runtime  # noqa: E402

CPU_RUNTIME = tune_cpu_runtime()  # what `cqd-port` runs with (before torch loads libgomp)

import torch  # noqa: E402

from cqd_port.data.store import ImageStore  # noqa: E402
from cqd_port.fileio import atomic_write_json  # noqa: E402
from cqd_port.models.network import SimpleNetwork  # noqa: E402
from cqd_port.models.vgg import init_state, vgg_m_specs  # noqa: E402
from cqd_port.train.device import configure_determinism, select_device  # noqa: E402
from cqd_port.train.evaluate import evaluate  # noqa: E402
from cqd_port.train.objective import Objective  # noqa: E402
from cqd_port.train.sgd import MatConvNetSGD, cqd_multipliers  # noqa: E402
from cqd_port.train.checkpoint import TrainingCheckpoint, save_training_checkpoint  # noqa: E402
import cqd_port.train.trainer as trainer_module  # noqa: E402
from cqd_port.train.trainer import TrainConfig, epoch_batches, train, train_step  # noqa: E402

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


class _TimedStore(ImageStore):
    """The store, noting when each batch is asked for (the start of a step); CPU only (`to` another device drops it)."""

    def __init__(self, store: ImageStore) -> None:
        super().__init__(store.images, store.labels, store.average_image, store.key)
        self.requests: list[float] = []

    def batch(self, indices):  # type: ignore[no-untyped-def]
        self.requests.append(time.perf_counter())
        return super().batch(indices)


class _PairedClock:
    """`on_step` for `train` that times the trainer's steps and, after each, one model-only step (side by side).

    Each trainer step is timed from the end of the previous callback to the
    start of this one (the device synchronised there), so the model-only
    step run inside the callback is not in it; pairing step by step puts
    both sides under the same machine load. With `model_step` None only the
    trainer is timed, and the device is synchronised at each epoch's first
    and last step only (a GPU's launch queue then stays full).
    """

    def __init__(self, device: torch.device, steps_per_epoch: int, model_step: Callable[[], Any] | None) -> None:
        self.device, self.steps_per_epoch, self.model_step = device, steps_per_epoch, model_step
        self.last_end: float | None = None
        self.trainer: dict[int, list[tuple[int, float]]] = {}  # epoch -> (step, seconds since the previous callback)
        self.model_only: list[float] = []
        self.epoch_end: dict[int, float] = {}  # epoch -> end of its last callback
        self.model_only_by_epoch: dict[int, float] = {}  # seconds of paired model-only steps run during each epoch
        self.first_last: dict[int, list[float]] = {}  # epoch -> [time of step 1 (end), time of the last step (end)]

    def start(self) -> None:
        _sync(self.device)
        self.last_end = time.perf_counter()

    def __call__(self, epoch: int, step: int, _tensors: Any) -> None:
        if self.model_step is not None or step in (1, self.steps_per_epoch):
            _sync(self.device)
        now = time.perf_counter()
        if step in (1, self.steps_per_epoch):
            self.first_last.setdefault(epoch, []).append(now)
        if self.last_end is not None:
            self.trainer.setdefault(epoch, []).append((step, now - self.last_end))
        if self.model_step is not None and step > 1:
            self.model_step()
            _sync(self.device)
            after = time.perf_counter()
            self.model_only.append(after - now)
            self.model_only_by_epoch[epoch] = self.model_only_by_epoch.get(epoch, 0.0) + after - now
            now = after
        self.last_end = now
        if step == self.steps_per_epoch:
            self.epoch_end[epoch] = now


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
    epochs: int = 2,
) -> dict[str, Any]:
    """Steady-state images/s of `train_step` on a fixed batch and of the trainer on a store, and the trainer's fixed costs.

    The trainer runs `epochs` epochs over `train_images` (default `batch *
    steps`) images. On the CPU the model-only steps are paired with the
    trainer's (`_PairedClock`); on a GPU (not shared, and a per-step
    synchronisation would empty the launch queue) `steps` model-only steps
    are timed before each trainer run instead.
    """
    device = select_device(str(device))
    configure_determinism(tf32, device)
    n = train_images if train_images is not None else batch * steps
    steps_per_epoch = -(-n // batch)
    store = synthetic_store(n, input_size, num_classes)
    test_store = synthetic_store(test_images, input_size, num_classes, seed=1) if test_images else None
    teacher = torch.randn(n, num_classes, generator=torch.Generator().manual_seed(2))
    objective = Objective("cqd", 200.0, 10.0)
    state = init_state(specs, seed=0)
    multipliers = cqd_multipliers(list(state))
    on_device = store.to(device)
    x, y = on_device.batch(torch.arange(batch))
    t = teacher[:batch].to(device)
    paired = device.type == "cpu"
    load = [os.getloadavg()[0]]

    model_only, end_to_end, first_epoch, fixed, checkpoint, shuffle, reset, eval_ips, in_trainer_checkpoint = ([] for _ in range(9))
    for _ in range(repeats):
        model = SimpleNetwork(specs, {k: v.clone() for k, v in state.items()}).to(device)
        optimizer = MatConvNetSGD(model.named_parameters(), multipliers=multipliers)

        def model_step() -> None:
            train_step(model, optimizer, objective, x, y, t, 1e-6)

        model_step()  # warm-up
        _sync(device)
        clock = _PairedClock(device, steps_per_epoch, model_step if paired else None)
        if not paired:
            start = time.perf_counter()
            for _ in range(steps):
                model_step()
            _sync(device)
            model_only.append(batch * steps / (time.perf_counter() - start))

        trained = SimpleNetwork(specs, {k: v.clone() for k, v in state.items()})
        timed = _TimedStore(store) if paired else store
        config = TrainConfig(epochs=epochs, batch_size=batch, schedule=(1e-6,), device=str(device), plot=False, tf32=tf32)
        in_trainer: list[float] = []  # the trainer's own checkpoint writes, timed where they happen
        original_save = trainer_module.save_training_checkpoint

        def timed_save(*a: Any, **k: Any) -> None:
            begun = time.perf_counter()
            original_save(*a, **k)
            in_trainer.append(time.perf_counter() - begun)

        trainer_module.save_training_checkpoint = timed_save
        with tempfile.TemporaryDirectory() as run_dir:
            started = time.perf_counter()
            result = train(trained, timed, None, config, objective, run_dir, teacher, multipliers, progress=False, on_step=clock)
            first_epoch.append(clock.first_last[1][-1] - started - clock.model_only_by_epoch.get(1, 0.0))
            # the fixed costs timed apart, on the trained model and an optimizer of its size
            trained_optimizer = MatConvNetSGD(trained.named_parameters(), multipliers=multipliers)
            _sync(device)
            started = time.perf_counter()
            save_training_checkpoint(
                Path(run_dir) / "timed.pt", TrainingCheckpoint(epochs, trained.state_dict(), trained_optimizer.state_dict(), result.history, {})
            )
            atomic_write_json(Path(run_dir) / "timed.json", result.history)
            checkpoint.append(time.perf_counter() - started)
        trainer_module.save_training_checkpoint = original_save
        in_trainer_checkpoint.extend(in_trainer[:-1])  # those at an epoch boundary (the last one ends the run)
        started = time.perf_counter()
        epoch_batches(n, batch, 0, 1)
        shuffle.append(time.perf_counter() - started)
        started = time.perf_counter()
        trained_optimizer.reset_momentum()
        _sync(device)
        reset.append(time.perf_counter() - started)
        # steady state: steps 2..N of every epoch (step 1 follows the epoch boundary or is the run's warm-up)
        steady = [(s, dt) for e in sorted(clock.trainer) for s, dt in clock.trainer[e] if s > 1]
        timed_images = len(clock.first_last) * (n - min(batch, n))
        if paired and steady:
            end_to_end.append(timed_images / sum(dt for _, dt in steady))
            model_only.append(batch * len(clock.model_only) / sum(clock.model_only))
        elif steady:
            spans = [v[-1] - v[0] for v in clock.first_last.values() if len(v) == 2]
            end_to_end.append(len(spans) * (n - min(batch, n)) / sum(spans) if spans else float("nan"))
        step_s = statistics.median(dt for _, dt in steady) if steady else float("nan")
        if not paired and steady:
            step_s = (n - min(batch, n)) / end_to_end[-1] / max(1, steps_per_epoch - 1)
        if paired:
            # the epoch boundary, measured directly: from the end of an epoch's last callback (its paired
            # model-only step done) to the next epoch's first batch request
            for end in clock.epoch_end.values():
                after = [r for r in timed.requests if r > end]
                if after:
                    fixed.append(after[0] - end)
        else:
            # on a GPU: from the end of an epoch's last step to the end of the next epoch's first step, less one step
            fixed.extend(
                clock.first_last[e + 1][0] - clock.first_last[e][-1] - step_s
                for e in sorted(clock.first_last)
                if e + 1 in clock.first_last
            )
        del model, optimizer, trained_optimizer
        if test_store is not None:
            _sync(device)
            started = time.perf_counter()
            evaluate(trained, test_store, batch_size=batch, device=device, tf32=tf32)
            eval_ips.append(test_images / (time.perf_counter() - started))
        load.append(os.getloadavg()[0])
    # the headline pair comes from one repeat (the least disturbed: the fastest model-only), so its ratio is side by side
    best = max(range(len(model_only)), key=lambda i: model_only[i])
    e2e = end_to_end[best] if len(end_to_end) == len(model_only) else float("nan")
    out = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "batch": batch,
        "train_images": n,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "tf32": tf32,
        "threads": torch.get_num_threads(),
        "paired_steps": paired,
        "end_to_end_images_per_s": e2e,
        "model_only_images_per_s": model_only[best],
        "end_to_end_over_model_only": e2e / model_only[best],
        "ratio_per_repeat": [e / m for e, m in zip(end_to_end, model_only)],
        "first_epoch_seconds": min(first_epoch),
        "per_epoch_fixed_seconds": min(fixed) if fixed else float("nan"),
        "checkpoint_seconds": min(checkpoint),
        "per_epoch_fixed_without_checkpoint_seconds": min(f - c for f, c in zip(fixed, in_trainer_checkpoint)) if fixed and len(fixed) == len(in_trainer_checkpoint) else (min(fixed) - min(checkpoint) if fixed else float("nan")),
        "in_trainer_checkpoint_seconds": in_trainer_checkpoint,
        "shuffle_seconds": min(shuffle),
        "momentum_reset_seconds": min(reset),
        "repeats": repeats,
        "loadavg_1min": load,
    }
    if eval_ips:
        out["test_images"] = test_images
        out["eval_images_per_s"] = max(eval_ips)
    return out


CUB_TRAIN_IMAGES = 5994


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (at least 20: one step is then < 5%% of an epoch)")
    parser.add_argument("--epochs", type=int, default=2, help="trainer epochs per repeat (2: one epoch boundary)")
    parser.add_argument("--case", choices=("all", "full", "reduced"), default="all")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cases = []
    if args.case in ("all", "full"):
        full = vgg_m_specs(num_classes=200, width=1.0, input_size=224, dropout=0.5, softmax=False)
        measured = measure_pipeline(full, 16, args.steps, args.device, repeats=args.repeats, epochs=args.epochs)
        cases.append({"network": "vgg-m full width, 224x224", **measured})
    if args.case in ("all", "reduced"):
        reduced = vgg_m_specs(num_classes=12, width=0.25, input_size=64, dropout=0.5, softmax=False)
        measured = measure_pipeline(reduced, 32, args.steps, args.device, repeats=args.repeats, input_size=64, num_classes=12, epochs=args.epochs)
        cases.append({"network": "vgg-m width 0.25, 64x64 (the demo's)", **measured})
    for case in cases:
        print(
            f"{case['network']:40s} batch {case['batch']:3d}, {case['steps_per_epoch']} steps/epoch: "
            f"end-to-end {case['end_to_end_images_per_s']:8.1f} img/s, model only {case['model_only_images_per_s']:8.1f} img/s, "
            f"ratio {case['end_to_end_over_model_only']:.3f} (per repeat {', '.join(f'{r:.3f}' for r in case['ratio_per_repeat'])}); "
            f"first epoch {case['first_epoch_seconds']:.2f} s, fixed per epoch {case['per_epoch_fixed_seconds']:.3f} s "
            f"({case['per_epoch_fixed_without_checkpoint_seconds']:.3f} s without the trainer's checkpoint write; that write alone, timed apart: {case['checkpoint_seconds']:.3f} s; "
            f"shuffle {case['shuffle_seconds'] * 1e3:.2f} ms, momentum reset {case['momentum_reset_seconds'] * 1e3:.2f} ms); "
            f"load {', '.join(f'{v:.1f}' for v in case['loadavg_1min'])}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        args.out,
        {
            "cases": cases,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_runtime": CPU_RUNTIME,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        },
    )
    print(json.dumps({"written": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
