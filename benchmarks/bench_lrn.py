"""The two LRN modes side by side: the layer alone and the whole full-width VGG-M forward, CPU.

`exact` (a true power, MatConvNet's GPU kernel) against `matconvnet-cpu`
(normalize_cpu.cpp's fast_pow and running sums, what every CPU reference
and `cqd-port parity --lrn auto` use), on channels-last activations as the
network produces them: conv1's LRN (96 x 109 x 109) and conv2's (256 x 26 x
26) at batch 16, forward and forward + backward, then the full-width VGG-M
forward at batch 16 in each mode. Measured alternately, best of
`--repeats`; wall seconds with the process's threads and, for the layer,
the process CPU seconds too (steadier on a shared machine). The machine's
load average is recorded.

Reference (issue 19, the same kind of 2-core machine): MatConvNet
1.0-beta18's CPU forward of full-width VGG-M at batch 16 takes 0.61-1.14 s.
Writes bench-out/bench_lrn.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.fileio import atomic_write_json  # noqa: E402
from cqd_port.models import SimpleNetwork, init_state, vgg_m_specs  # noqa: E402
from cqd_port.nn.lrn import LRN_MODES, lrn  # noqa: E402

MATCONVNET_CPU_FORWARD_S = (0.61, 1.14)
PARAM = [5, 2.0, 1e-4, 0.75]  # VGG-M's norm1 and norm2


def _best(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall and best process-CPU seconds of `fn` over `repeats` calls (after one warm-up)."""
    fn()
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_lrn.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    gen = torch.Generator().manual_seed(0)
    layers = []
    for name, shape in (("norm1", (args.batch, 96, 109, 109)), ("norm2", (args.batch, 256, 26, 26))):
        x = (torch.randn(shape, generator=gen).relu() * 30).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
        xg = x.clone().requires_grad_()
        row: dict[str, object] = {"layer": name, "shape": list(shape)}
        for mode in LRN_MODES:
            row[f"{mode}_forward_s"], row[f"{mode}_forward_cpu_s"] = _best(lambda: lrn(x, PARAM, mode), args.repeats)
            row[f"{mode}_forward_backward_s"], row[f"{mode}_forward_backward_cpu_s"] = _best(
                lambda: lrn(xg, PARAM, mode).backward(grad), args.repeats
            )
        layers.append(row)
        print(
            f"{name} {tuple(shape)}: forward exact {row['exact_forward_s']:.3f} s, matconvnet-cpu {row['matconvnet-cpu_forward_s']:.3f} s; "
            f"forward+backward exact {row['exact_forward_backward_s']:.3f} s, matconvnet-cpu {row['matconvnet-cpu_forward_backward_s']:.3f} s",
            flush=True,
        )

    specs = vgg_m_specs(num_classes=1000, width=1.0, input_size=224, dropout=0.5, softmax=False)
    state = init_state(specs, seed=0)
    nets = {mode: SimpleNetwork(specs, state, lrn_mode=mode).eval() for mode in LRN_MODES}
    images = torch.randn(args.batch, 3, 224, 224, generator=gen) * 50
    network: dict[str, float] = {mode: float("inf") for mode in LRN_MODES}
    with torch.no_grad():
        for net in nets.values():
            net(images)  # warm-up
        for _ in range(args.repeats):  # alternating
            for mode, net in nets.items():
                started = time.perf_counter()
                net(images)
                network[mode] = min(network[mode], time.perf_counter() - started)
    print(
        f"full-width VGG-M forward, batch {args.batch}: exact {network['exact']:.3f} s, matconvnet-cpu {network['matconvnet-cpu']:.3f} s "
        f"(MatConvNet's own CPU forward: {MATCONVNET_CPU_FORWARD_S[0]}-{MATCONVNET_CPU_FORWARD_S[1]} s)"
    )
    atomic_write_json(
        args.out,
        {
            "layers": layers,
            "vggm_forward_s": network,
            "matconvnet_cpu_forward_s": list(MATCONVNET_CPU_FORWARD_S),
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "torch": torch.__version__,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
