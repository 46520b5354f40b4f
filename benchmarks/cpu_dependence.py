"""Do training numbers depend on the CPU's instruction set or the thread count? Final weights compared bit for bit.

A short fixed training of the demo's reduced VGG-M (width 0.25, 64x64
input, 12 classes, batch 32, `cqd_port.train.trainer.train` with the CQD
objective, cached teacher logits, MatConvNet SGD, dropout) on fixed
synthetic tensors, run in fresh subprocesses under each setting:
`ATEN_CPU_CAPABILITY` = the machine's default, `avx2`, `default` (no SIMD
kernels), crossed with 1 and 2 torch threads. Each worker writes its final
state dict and test accuracy; the parent compares every setting with the
first (the machine's own ISA, 1 thread): identical bits or the largest
difference, per parameter; the native 1- and 2-thread runs are repeated at
the end (each must equal its first run). The LRN mode follows `--lrn` (the demo uses
exact).

Usage: python benchmarks/cpu_dependence.py [--epochs 3] [--lrn exact]
Writes bench-out/cpu_dependence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.fileio import atomic_write_json  # noqa: E402

SETTINGS = [(isa, threads) for isa in ("", "avx2", "default") for threads in (1, 2)] + [("", 1), ("", 2)]
"""The last two repeat the first two: does a setting reproduce itself?"""


def worker(out: Path, threads: int, epochs: int, lrn_mode: str) -> None:
    """Train once under this process's settings; save the final weights and the test accuracy."""
    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_train_pipeline import synthetic_store

    from cqd_port.models.network import SimpleNetwork
    from cqd_port.models.vgg import init_state, vgg_m_specs
    from cqd_port.train.objective import Objective
    from cqd_port.train.sgd import cqd_multipliers
    from cqd_port.train.trainer import TrainConfig, train

    specs = vgg_m_specs(num_classes=12, width=0.25, input_size=64, dropout=0.5, softmax=False)
    state = init_state(specs, seed=0)
    train_store = synthetic_store(256, 64, 12, seed=0)
    test_store = synthetic_store(96, 64, 12, seed=1)
    teacher = torch.randn(256, 12, generator=torch.Generator().manual_seed(2)) * 5
    model = SimpleNetwork(specs, state, lrn_mode=lrn_mode)
    config = TrainConfig(epochs=epochs, batch_size=32, schedule=(1e-3,), device="cpu", plot=False, lrn_mode=lrn_mode)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, train_store, test_store, config, Objective("cqd", 50.0, 10.0), run_dir, teacher, cqd_multipliers(list(state)), progress=False)
    torch.save(
        {
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "accuracy": result.accuracy,
            "objective": result.history[-1]["train"]["total"],
            "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
        },
        out,
    )


def compare(reference: dict, other: dict) -> dict:
    differing = {}
    for name, want in reference["state"].items():
        got = other["state"][name]
        if not torch.equal(got, want):
            differing[name] = float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))
    return {
        "identical_bits": not differing,
        "parameters_differing": len(differing),
        "worst_relative_difference": max(differing.values()) if differing else 0.0,
        "accuracy_difference": other["accuracy"] - reference["accuracy"],
        "objective_difference": other["objective"] - reference["objective"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrn", default="exact")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "cpu_dependence.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads, args.epochs, args.lrn)
        return 0
    rows, reference, firsts = [], None, {}
    with tempfile.TemporaryDirectory() as tmp:
        for isa, threads in SETTINGS:
            env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
            if isa:
                env["ATEN_CPU_CAPABILITY"] = isa
            path = Path(tmp) / f"{isa or 'native'}-{threads}.pt"
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--worker", str(path), "--threads", str(threads), "--epochs", str(args.epochs), "--lrn", args.lrn],
                env=env, check=True,
            )
            result = torch.load(path, weights_only=True)
            row = {"ATEN_CPU_CAPABILITY": isa or "(unset)", "capability_used": result["capability"], "threads": result["threads"],
                   "accuracy": result["accuracy"], "seconds": time.perf_counter() - started}
            if reference is None:
                reference = result
            row.update(compare(reference, result))
            if (isa, threads) in firsts:  # a repeat: bit for bit the same as the first run of this setting?
                row["same_as_its_first_run"] = compare(firsts[(isa, threads)], result)["identical_bits"]
            firsts.setdefault((isa, threads), result)
            rows.append(row)
            print(json.dumps(row), flush=True)
    atomic_write_json(args.out, {"epochs": args.epochs, "lrn": args.lrn, "rows": rows, "torch": torch.__version__, "loadavg": list(os.getloadavg())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
