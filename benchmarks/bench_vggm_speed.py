"""VGG-M speed on CPU: our MatConvNet-faithful `SimpleNetwork` against a plain PyTorch VGG-M.

Full-width VGG-M (random weights), a batch of 16 images of 224x224, float32:
images/s and seconds per batch for the forward pass and for forward +
backward (gradients of every parameter and of the input), exact LRN. The
plain network is what one would write without caring about MatConvNet:
`nn.Conv2d`, `nn.MaxPool2d`, `nn.LocalResponseNorm(5, alpha=5 * 1e-4,
beta=0.75, k=2)` (PyTorch divides alpha by N), fc layers as convolutions.
Both get the same weights and input, and the bench checks their outputs agree.

Reference (from the issue, the same 2-core machine): MatConvNet 1.0-beta18's
CPU kernels take 1.3-1.6 s forward and 5.2-5.5 s forward + backward per batch
of 16. Writes bench-out/bench_vggm_speed.json.

Usage: python benchmarks/bench_vggm_speed.py [--repeats N] [--batch N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cqd_port.fileio import atomic_write_json  # noqa: E402
from cqd_port.models import SimpleNetwork, init_state, vgg_m_specs  # noqa: E402

MATCONVNET_FORWARD_S = (1.3, 1.6)
MATCONVNET_FORWARD_BACKWARD_S = (5.2, 5.5)


def plain_vggm(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """VGG-M written the ordinary PyTorch way, loaded with the same weights."""

    def conv(name: str, stride: int = 1, padding: int = 0) -> nn.Conv2d:
        weight = state[f"{name}.weight"]
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=stride, padding=padding)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(state[f"{name}.bias"])
        return layer

    lrn = lambda: nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)  # noqa: E731
    return nn.Sequential(
        conv("conv1", stride=2), nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
        conv("conv2", stride=2, padding=1), nn.ReLU(inplace=True), lrn(),
        nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2),  # pool2 pads [0 1 0 1] (after ReLU, so 0 acts as -inf)
        conv("conv3", padding=1), nn.ReLU(inplace=True),
        conv("conv4", padding=1), nn.ReLU(inplace=True),
        conv("conv5", padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        conv("fc6"), nn.ReLU(inplace=True),
        conv("fc7"), nn.ReLU(inplace=True),
        conv("fc8"), nn.Softmax(dim=1),
    )


def time_call(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of each call (CPU time is less disturbed by other load)."""
    fn()  # warm-up: oneDNN primitive creation, allocator
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def measure(model: nn.Module, x: torch.Tensor, dzdy: torch.Tensor, repeats: int) -> dict[str, float]:
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        (model(xg) * dzdy).sum().backward()

    fwd, fwd_cpu = time_call(forward, repeats)
    fb, fb_cpu = time_call(forward_backward, repeats)
    n = x.shape[0]
    return {
        "forward_s": min(fwd),
        "forward_s_median": statistics.median(fwd),
        "forward_images_per_s": n / min(fwd),
        "forward_backward_s": min(fb),
        "forward_backward_s_median": statistics.median(fb),
        "forward_backward_images_per_s": n / min(fb),
        "forward_cpu_s": min(fwd_cpu),
        "forward_backward_cpu_s": min(fb_cpu),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_vggm_speed.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    specs = vgg_m_specs(num_classes=1000, width=1.0, input_size=224)
    state = init_state(specs, seed=0, method="xavierimproved")  # activations of a realistic scale through LRN
    ours = SimpleNetwork(specs, state, lrn_mode="exact")
    plain = plain_vggm(state)
    x = torch.randn(args.batch, 3, 224, 224) * 50.0  # mean-subtracted pixel scale
    dzdy = torch.randn(args.batch, 1000, 1, 1)

    with torch.no_grad():
        got, want = ours(x), plain(x)
        agreement = float((got - want).abs().max() / want.abs().max())
    if agreement > 1e-4:
        print(f"ours and plain PyTorch disagree: relative error {agreement:.2e}", file=sys.stderr)
        return 1

    results = {}
    for name, model in (("ours", ours), ("plain_pytorch", plain)):
        print(f"timing {name} ...", flush=True)
        results[name] = measure(model, x, dzdy, args.repeats)

    o, p = results["ours"], results["plain_pytorch"]
    rows = [
        ("forward s/batch", o["forward_s"], p["forward_s"], "%.3f"),
        ("forward images/s", o["forward_images_per_s"], p["forward_images_per_s"], "%.1f"),
        ("fwd+bwd s/batch", o["forward_backward_s"], p["forward_backward_s"], "%.3f"),
        ("fwd+bwd images/s", o["forward_backward_images_per_s"], p["forward_backward_images_per_s"], "%.1f"),
        ("forward CPU s", o["forward_cpu_s"], p["forward_cpu_s"], "%.3f"),
        ("fwd+bwd CPU s", o["forward_backward_cpu_s"], p["forward_backward_cpu_s"], "%.3f"),
    ]
    print(f"\nVGG-M, batch {args.batch} x 3 x 224 x 224, float32, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'':18s} {'ours':>9s} {'plain':>9s} {'ours/plain':>10s}")
    for label, a, b, fmt in rows:
        print(f"{label:18s} {fmt % a:>9s} {fmt % b:>9s} {a / b:10.2f}")
    print(
        f"MatConvNet 1.0-beta18 CPU (issue's figures): forward {MATCONVNET_FORWARD_S[0]}-{MATCONVNET_FORWARD_S[1]} s, "
        f"fwd+bwd {MATCONVNET_FORWARD_BACKWARD_S[0]}-{MATCONVNET_FORWARD_BACKWARD_S[1]} s per batch of 16"
    )
    print("(CPU s = process CPU seconds over all threads; wall-clock s/batch is what compares with MatConvNet)")
    print(f"ours vs plain outputs: relative error {agreement:.1e}")
    atomic_write_json(
        args.out,
        {
            "benchmark": "bench_vggm_speed",
            "batch": args.batch,
            "input": [3, 224, 224],
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "results": results,
            "ratios_ours_over_plain": {
                "forward_s": o["forward_s"] / p["forward_s"],
                "forward_backward_s": o["forward_backward_s"] / p["forward_backward_s"],
                "forward_cpu_s": o["forward_cpu_s"] / p["forward_cpu_s"],
                "forward_backward_cpu_s": o["forward_backward_cpu_s"] / p["forward_backward_cpu_s"],
            },
            "matconvnet_reference_s": {"forward": list(MATCONVNET_FORWARD_S), "forward_backward": list(MATCONVNET_FORWARD_BACKWARD_S)},
            "ours_vs_plain_relative_error": agreement,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
