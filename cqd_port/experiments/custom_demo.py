"""`cqd-port demo --custom`: `cqd-port train` end to end on SYNTHETIC data, on a CPU, in minutes.

What a user of "Your own data" does, with every piece generated here:

* data: a synthetic birds dataset (`make_synthetic_dataset`) whose `images/`
  folder is an ImageFolder (one folder per class), with `train.txt` /
  `test.txt` written from the generator's own split;
* degradation: the README's example plugin,
  `cqd_port.plugins.blur:gaussian_blur` (sigma `blur_sigma` pixels at the
  prepared size);
* networks: torchvision ResNet-18 for f and g, from random weights (no
  torchvision weights can be downloaded here), at the prepared size;
* methods: f on A (the upper bound, and CQD's teacher), f on B (no
  adaptation), fine-tuning g on B, CQD; one out folder, one `cqd-port train`
  config (`<out>/demo-custom.yaml`, runnable by hand) per method.

The schedule is short and its rates are larger than the paper's (random
weights, few epochs): the numbers show the machinery, not the paper's claim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLUR = "cqd_port.plugins.blur:gaussian_blur"
METHODS = ("A", "no_adaptation", "B", "CQD")
LABELS = {
    "A": "Upper bound (f on A, tested on A)",
    "no_adaptation": "No adaptation (f tested on B)",
    "B": "Fine-tuning (g on B)",
    "CQD": "CQD (g on B, distilled from f)",
}


@dataclass
class CustomDemoConfig:
    """Sizes and schedule (defaults: a few minutes on two CPU cores)."""

    out: Path = Path("runs/demo-custom")
    arch: str = "resnet18"
    image_size: int = 48
    classes: int = 6
    train_per_class: int = 40
    test_per_class: int = 30
    blur_sigma: float = 2.0
    epochs: int = 10
    batch_size: int = 32
    schedule: tuple[float, ...] = (0.01,)  # squeezed over the epochs; see cqd_port.train.schedules.shorten_schedule
    optimizer: str = "torch"
    lambda_: float = 200.0
    temperature: float = 10.0
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def demo_data(config: CustomDemoConfig) -> Path:
    """The synthetic dataset as an ImageFolder with train.txt / test.txt; returns its root (cached)."""
    from cqd_port.data.cub import read_cub
    from cqd_port.data.synth import is_synthetic, make_synthetic_dataset
    from cqd_port.fileio import atomic_write_json, atomic_write_text

    base = Path(config.out) / "data" / "birds"
    root = base / "images"
    if not is_synthetic(root):
        if not is_synthetic(base):
            make_synthetic_dataset(base, config.classes, config.train_per_class, config.test_per_class, config.image_size, config.seed, "birds")
        index = read_cub(base)
        for name, train in (("train.txt", True), ("test.txt", False)):
            lines = [r.path.removeprefix("images/") for r in index.records if r.train == train]
            atomic_write_text(root / name, "\n".join(lines) + "\n")
        atomic_write_json(root / "synthetic.json", {"synthetic": True, "made_by": "cqd-port demo --custom"})
    return root


def demo_config_data(config: CustomDemoConfig, root: Path, method: str) -> dict[str, Any]:
    """The `cqd-port train` configuration of one method (YAML data)."""
    net = {"arch": config.arch, "weights": "random", "input_size": config.image_size}
    return {
        "method": method,
        "out": str(Path(config.out) / "run"),
        "data": {
            "root": str(root),
            "name": "birds",
            "size": config.image_size,
            "prepared": str(Path(config.out) / "prepared"),
            "degradation": BLUR,
            "parameters": {"sigma": config.blur_sigma},
        },
        "teacher": dict(net),
        "student": dict(net),
        "train": {
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "schedule": list(config.schedule),
            "optimizer": config.optimizer,
            "lambda": config.lambda_,
            "temperature": config.temperature,
            "seed": config.seed,
            "device": config.device,
        },
    }


@dataclass
class CustomDemoOutcome:
    accuracies: dict[str, float]
    report: str
    seconds: float
    out: Path


def run_custom_demo(config: CustomDemoConfig) -> CustomDemoOutcome:
    """Every method of `METHODS` through `run_custom`, then a table (resumable: finished runs are reused)."""
    import yaml

    from cqd_port.experiments.custom import parse_config, run_custom
    from cqd_port.fileio import atomic_write_text

    started = time.perf_counter()
    root = demo_data(config)
    accuracies: dict[str, float] = {}
    for method in METHODS:
        data = demo_config_data(config, root, method)
        if method == "CQD":
            atomic_write_text(Path(config.out) / "demo-custom.yaml", yaml.safe_dump(data, sort_keys=False))
        outcome = run_custom(parse_config(data), progress=config.progress)
        accuracies[method] = float(outcome.record["accuracy"])
    seconds = time.perf_counter() - started
    report = custom_demo_report(config, accuracies, seconds)
    atomic_write_text(Path(config.out) / "results.md", report)
    return CustomDemoOutcome(accuracies, report, seconds, Path(config.out))


def custom_demo_report(config: CustomDemoConfig, accuracies: dict[str, float], seconds: float) -> str:
    """The demo's table, what it ran on, and CQD against fine-tuning."""
    n_test = config.classes * config.test_per_class
    lines = [
        f"SYNTHETIC data ({config.classes} classes, {config.train_per_class} training and {config.test_per_class} test images each, "
        f"{config.image_size}x{config.image_size}); B = Gaussian blur plugin (sigma {config.blur_sigma:g} px); "
        f"f and g: torchvision {config.arch} from random weights; {config.epochs} epochs, {config.optimizer} SGD, "
        f"lambda {config.lambda_:g}, T {config.temperature:g}. One seed; one test image is {100 / n_test:.2f} points.",
        "",
        "| method | test accuracy (%) |",
        "|---|---|",
        *[f"| {LABELS[m]} | {accuracies[m]:.1f} |" for m in METHODS],
        "",
        f"CQD - fine-tuning: {accuracies['CQD'] - accuracies['B']:+.1f} points ({seconds / 60:.1f} min). "
        f"Runs, configs and figures: {Path(config.out) / 'run'}; the CQD config: {Path(config.out) / 'demo-custom.yaml'}.",
    ]
    return "\n".join(lines) + "\n"
