"""One command for a machine with a GPU: is cqd-port right and fast there, and how long would the paper's grids take?

    python benchmarks/gpu_check.py                 # on a CUDA machine (under 8 minutes on one H100/H200)
    python benchmarks/gpu_check.py --device cpu --quick   # the same steps at toy sizes (the test suite runs this)

Steps, all written into one JSON (`benchmarks/results/gpu_check.json` unless
`--out`) and printed:

1. the card, torch and CUDA versions;
2. the parity suite (`cqd-port parity`, each file with the LRN its
   provenance names: exact for the exact-pow references) pass/fail counts and
   worst relative error (`--quick`: two operator references). The parity
   runner itself has no device option yet: the JSON says where it ran;
3. full-width VGG-M forward+backward images/s at batch 128, strict fp32 and
   with TF32;
4. two epochs of the real trainer on a CUB-sized synthetic set (5,994 train /
   5,794 test images at 224x224, stored uint8 as a degraded variant is, full
   average image): steady-state end-to-end over model-only, the first
   epoch, the per-epoch fixed cost with and without the checkpoint (as
   `bench_train_pipeline.py` measures them, in seconds) and what share of a
   CUB epoch that fixed cost is, the test pass's images/s;
5. the same for VGG-VD-16 at batch 32 (Table 2's heavy runs);
6. the projected wall time of the whole Table 1 and Table 2 grids on one such
   GPU from those rates: every run of `plan_grid` (30 epochs of its training
   images at the end-to-end rate plus the per-epoch fixed cost, checkpoint
   included, a test pass per epoch, the teacher's
   logits once for CQD runs, no-adaptation runs one test pass). Runs are
   counted one after another: `--gpus 0,0,0,0` packs four runs on the GPU
   (memory allows it) but this projection assumes no throughput gain from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# first: importing it tunes the CPU runtime as `cqd-port` does, before torch loads libgomp
from bench_train_pipeline import _sync, measure_pipeline  # noqa: E402

import torch  # noqa: E402

from cqd_port.fileio import atomic_write_json  # noqa: E402
from cqd_port.models.network import SimpleNetwork  # noqa: E402
from cqd_port.models.vgg import init_state, vgg_m_specs, vgg_vd16_specs  # noqa: E402
from cqd_port.train.device import configure_determinism, select_device  # noqa: E402
from cqd_port.train.objective import class_scores  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
CUB = {"train": 5994, "test": 5794}
CARS = {"train": 8144, "test": 8041}


def card(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info.update(card=platform.processor() or platform.machine(), threads=torch.get_num_threads(), cuda=torch.version.cuda)
    return info


def parity(quick: bool) -> dict[str, Any]:
    from cqd_port_parity.runner import default_reference_dirs, run_parity

    started = time.perf_counter()
    try:
        if quick:
            shared = Path(os.environ.get("CQD_SHARED", ROOT.parent / "shared")) / "parity"  # as the tests find ../shared
            files = [shared / name for name in ("ops_misc.mat", "ops_normalize_exactpow.mat") if (shared / name).is_file()]
            rows = [row for f in files for row in run_parity(reference=f, lrn="auto").rows]
            scope = [f.name for f in files]
        else:
            rows = run_parity(lrn="auto").rows
            scope = [str(d) for d in default_reference_dirs()]
    except Exception as exc:  # noqa: BLE001 - a crash is a result of the check, reported in the JSON
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - started}
    failed = [r for r in rows if not r.passed]
    finite = [r.rel for r in rows if r.rel == r.rel]
    return {
        "ran_on": "cpu (the parity runner has no device option)",
        "lrn": "auto: each file's provenance (exact pow where MatConvNet's GPU/exact kernels wrote it, fast_pow for its CPU files)",
        "scope": scope,
        "passed": len(rows) - len(failed),
        "failed": len(failed),
        "worst_rel": max(finite) if finite else None,
        "worst_failed": [f"{r.group} {r.case} {r.quantity}: {r.rel:.3g} > {r.tol:g}" for r in sorted(failed, key=lambda r: -(r.rel if r.rel == r.rel else 1e99))[:5]],
        "seconds": time.perf_counter() - started,
    }


def forward_backward(specs: list, batch: int, size: int, device: torch.device, tf32: bool, steps: int) -> float:
    """Images/s of forward + backward (no update) on a batch already on the device."""
    configure_determinism(tf32, device)
    model = SimpleNetwork(specs, init_state(specs, seed=0)).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(class_scores(model(x)), y, reduction="sum").backward()

    step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


def project(table: int, rates: dict[str, dict[str, float]], epochs: int | None = None) -> dict[str, Any]:
    """Seconds of every run of Table `table` at the measured rates, one run after another."""
    from cqd_port.experiments.plan import plan_grid

    plan = plan_grid(table, epochs=epochs)
    total = 0.0
    for run in plan.runs.values():
        counts = CUB if run.test.dataset == "cub" else CARS
        rate = rates[run.arch]
        if not run.trains:
            total += counts["test"] / rate["eval"]
            continue
        train_images = counts["train"] * len(run.train)
        per_epoch = train_images / rate["train"] + rate["fixed"] + counts["test"] / rate["eval"]
        total += run.hyper.epochs * per_epoch
        if run.distill:
            total += counts["train"] / rates[run.teacher_arch or run.arch]["eval"]
    return {"runs": len(plan.runs), "hours": total / 3600, "runs_per_gpu_packed": 4, "assumes": "no throughput gain from packing; measured rates"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cqd-port on a GPU: versions, parity, speed, projected grid time")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a CPU check of the script itself)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = select_device(args.device)
    result: dict[str, Any] = {"quick": args.quick, "versions": card(device)}
    print("parity ...", flush=True)
    result["parity"] = parity(args.quick)

    if args.quick:  # toy sizes: the same code paths in seconds
        vggm = vgg_m_specs(num_classes=10, width=0.125, input_size=64, dropout=0.5, softmax=False)
        vgg16 = vgg_vd16_specs(num_classes=10, width=0.0625, input_size=32, dropout=0.5, softmax=False)
        sizes = {"vggm": (64, 8, 1), "vgg16": (32, 8, 1)}  # input, batch, fwd/bwd steps
        sets = {"train": 16, "test": 8}
        classes = 10
    else:
        vggm = vgg_m_specs(num_classes=200, width=1.0, input_size=224, dropout=0.5, softmax=False)
        vgg16 = vgg_vd16_specs(num_classes=200, width=1.0, input_size=224, dropout=0.5, softmax=False)
        sizes = {"vggm": (224, 128, 10), "vgg16": (224, 32, 10)}
        sets = dict(CUB)
        classes = 200

    print("forward+backward ...", flush=True)
    size, batch, steps = sizes["vggm"]
    result["vggm_forward_backward"] = {
        "batch": batch,
        "input": size,
        "fp32_images_per_s": forward_backward(vggm, batch, size, device, False, steps),
        "tf32_images_per_s": forward_backward(vggm, batch, size, device, True, steps),
    }
    rates: dict[str, dict[str, float]] = {}
    for name, specs, arch in (("vggm", vggm, "vgg-m"), ("vgg16", vgg16, "vgg-vd-16")):
        print(f"one epoch of the trainer: {name} ...", flush=True)
        size, batch, _ = sizes[name]
        measured = measure_pipeline(
            specs, batch, steps=1 if args.quick else 10, device=device, repeats=1, input_size=size, num_classes=classes,
            test_images=sets["test"], train_images=sets["train"],
        )
        epoch_s = measured["train_images"] / measured["end_to_end_images_per_s"]
        measured["fixed_share_of_epoch_without_checkpoint"] = measured["per_epoch_fixed_without_checkpoint_seconds"] / epoch_s
        measured["fixed_share_of_epoch_with_checkpoint"] = measured["per_epoch_fixed_seconds"] / epoch_s
        result[f"{name}_epoch"] = {"network": arch, **measured}
        print(
            f"  steady end-to-end {measured['end_to_end_images_per_s']:.1f} img/s = {measured['end_to_end_over_model_only']:.3f} x model only; "
            f"first epoch {measured['first_epoch_seconds']:.2f} s; fixed per epoch {measured['per_epoch_fixed_seconds']:.3f} s "
            f"({measured['per_epoch_fixed_without_checkpoint_seconds']:.3f} s without the checkpoint's {measured['checkpoint_seconds']:.3f} s)",
            flush=True,
        )
        rates[arch] = {"train": measured["end_to_end_images_per_s"], "eval": measured["eval_images_per_s"], "fixed": max(0.0, measured["per_epoch_fixed_seconds"])}
    result["projection"] = {"table1": project(1, rates), "table2": project(2, rates)}
    result["seconds"] = time.perf_counter() - started
    configure_determinism(False, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0 if "error" not in result["parity"] and result["parity"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
