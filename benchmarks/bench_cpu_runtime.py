"""What `cqd_port.cpuruntime` buys: one training step of the demo's network (and full-width VGG-M) under three CPU runtime settings.

Settings, each in a fresh process (libgomp and glibc read theirs at start):

* `default`: `CQD_PORT_CPU_RUNTIME=default` (libgomp's spin-then-sleep
  default, glibc's malloc thresholds);
* `passive`: `OMP_WAIT_POLICY=PASSIVE` and glibc's defaults (what `cqd-port`
  set before this benchmark existed);
* `tuned`: what `cqd-port` sets now (`tune_cpu_runtime`: a bounded spin,
  a malloc that keeps its memory).

Each is measured on the machine as it is (`idle`) and with one busy process
per CPU started beside it (`loaded`: a shared machine). A case trains the
demo's reduced VGG-M (width 0.25, 64x64, batch 32, CQD-style MatConvNet SGD)
for `--warmup` steps, then times `--steps` steps (ms per step, system CPU
ms per step, page faults per step) and prints a digest of the final weights:
every setting must give the same digest (the settings change speed, never a
number). Full-width VGG-M (224x224, batch 16: fc6's 300 MB weight, its
gradient and momentum) is timed the same way on the idle machine, 2 warm-up
and `--full-steps` steps, with its peak resident memory. Cases are
interleaved, `--repeats` times; the table gives each case's median. Writes
`benchmarks/results/cpu_runtime.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.cpuruntime import MALLOC_VARIABLES, OPT_OUT  # noqa: E402
from cqd_port.fileio import atomic_write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu_runtime.json"
SETTINGS = {
    "default": {OPT_OUT: "default"},
    "passive": {OPT_OUT: "default", "OMP_WAIT_POLICY": "PASSIVE"},
    "tuned": {},
}

CASE = r"""
import sys
sys.path.insert(0, sys.argv[3])
from cqd_port.cpuruntime import tune_cpu_runtime
done = tune_cpu_runtime()
import hashlib, json, resource, time, torch
from cqd_port.models.network import SimpleNetwork
from cqd_port.models.vgg import init_state, vgg_m_specs
from cqd_port.train.objective import Objective
from cqd_port.train.sgd import MatConvNetSGD, cqd_multipliers
from cqd_port.train.trainer import train_step
warmup, steps, network = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
classes, width, size, batch = (12, 0.25, 64, 32) if network == "demo" else (200, 1.0, 224, 16)
specs = vgg_m_specs(num_classes=classes, width=width, input_size=size, dropout=0.5, softmax=False)
model = SimpleNetwork(specs, init_state(specs, seed=0))
opt = MatConvNetSGD(model.named_parameters(), multipliers=cqd_multipliers([n for n, _ in model.named_parameters()]))
objective = Objective("softmaxlog")
g = torch.Generator().manual_seed(1)
x = torch.randn(batch, 3, size, size, generator=g); y = torch.randint(0, classes, (batch,), generator=g)
torch.manual_seed(2)
for _ in range(warmup):
    train_step(model, opt, objective, x, y, None, 0.01)
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
for _ in range(steps):
    train_step(model, opt, objective, x, y, None, 0.01)
t1 = time.perf_counter(); r1 = resource.getrusage(resource.RUSAGE_SELF)
digest = hashlib.sha256()
for name, value in model.state_dict().items():
    digest.update(name.encode()); digest.update(value.numpy().tobytes())
print(json.dumps({"ms_per_step": (t1 - t0) / steps * 1e3, "max_resident_gb": r1.ru_maxrss / 2**20, "system_ms_per_step": (r1.ru_stime - r0.ru_stime) / steps * 1e3,
                  "page_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps, "weights_sha256": digest.hexdigest(),
                  "threads": torch.get_num_threads(), "runtime": done}))
"""


def _case(setting: str, warmup: int, steps: int, network: str = "demo") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", OPT_OUT, *MALLOC_VARIABLES}}
    env.update(SETTINGS[setting])
    command = [sys.executable, "-c", CASE, str(warmup), str(steps), str(ROOT), network]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), for the record beside a benchmark's figures."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full-steps", type=int, default=5, help="steps of the full-width case (0: skip it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    loads = ("idle", "loaded") + (("full_width_idle",) if args.full_steps > 0 else ())
    measured: dict[str, dict[str, list[dict]]] = {load: {s: [] for s in SETTINGS} for load in loads}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for setting in SETTINGS:
            measured["idle"][setting].append(_case(setting, args.warmup, args.steps))
            if args.full_steps > 0:
                measured["full_width_idle"][setting].append(_case(setting, 2, args.full_steps, "full"))
        busy = _busy(cpus)
        try:
            time.sleep(0.5)
            for setting in SETTINGS:
                measured["loaded"][setting].append(_case(setting, args.warmup, args.steps))
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    digests = {
        network: {c["weights_sha256"] for load, by_setting in measured.items() if load.startswith("full") == (network == "full")
                  for cases in by_setting.values() for c in cases}
        for network in ("demo", "full") if network == "demo" or args.full_steps > 0
    }
    table = {
        load: {
            setting: {
                "ms_per_step": statistics.median(c["ms_per_step"] for c in cases),
                "system_ms_per_step": statistics.median(c["system_ms_per_step"] for c in cases),
                "page_faults_per_step": statistics.median(c["page_faults_per_step"] for c in cases),
                "max_resident_gb": round(statistics.median(c["max_resident_gb"] for c in cases), 2),
                "every_ms_per_step": [round(c["ms_per_step"], 2) for c in cases],
            }
            for setting, cases in by_setting.items()
        }
        for load, by_setting in measured.items()
    }
    result = {
        "cpu": cpu_model(),
        "cpus": cpus,
        "threads": measured["idle"]["tuned"][0]["threads"],
        "load_average_before": load_before,
        "loaded_means": f"{cpus} busy processes beside the case",
        "networks": {"idle, loaded": "demo: VGG-M width 0.25, 64x64, batch 32", "full_width_idle": "VGG-M full width, 224x224, batch 16, 200 classes"},
        "full_width_steps": args.full_steps,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "tuned_runtime": measured["idle"]["tuned"][0]["runtime"],
        "same_weights_in_every_case": all(len(d) == 1 for d in digests.values()),
        "cases": table,
    }
    atomic_write_json(args.out, result)
    print(f"{result['cpu']}, {cpus} CPUs, {result['threads']} threads; demo network, ms per step (median of {args.repeats})")
    print(f"{'setting':10s} {'idle':>8s} {'loaded':>8s} {'sys ms idle':>12s} {'faults idle':>12s}")
    for setting in SETTINGS:
        idle, loaded = table["idle"][setting], table["loaded"][setting]
        print(f"{setting:10s} {idle['ms_per_step']:8.1f} {loaded['ms_per_step']:8.1f} {idle['system_ms_per_step']:12.2f} {idle['page_faults_per_step']:12.0f}")
    if "full_width_idle" in table:
        print(f"full-width VGG-M, batch 16, 224x224, idle: ms per step, system ms, faults per step, max resident GB")
        for setting in SETTINGS:
            full = table["full_width_idle"][setting]
            print(f"{setting:10s} {full['ms_per_step']:8.0f} {full['system_ms_per_step']:8.0f} {full['page_faults_per_step']:10.0f} {full['max_resident_gb']:6.2f}")
    print(f"same weights in every case: {result['same_weights_in_every_case']}; wrote {args.out}")
    return 0 if result["same_weights_in_every_case"] else 1


if __name__ == "__main__":
    sys.exit(main())
