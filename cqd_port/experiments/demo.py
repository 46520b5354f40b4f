"""`cqd-port demo`: Table 1's whole grid, end to end, on SYNTHETIC data, on a CPU.

The same code as `cqd-port reproduce --table 1` (plan, prepared variants,
networks set up as the released code did, every method, results.json) runs
on generated data small enough for two CPU cores:

* data: `make_synthetic_dataset` (style `birds` for the CUB columns, `cars`
  for the CARS columns), prepared at `image_size` pixels instead of 224, with
  the degradations' pixel parameters scaled by `image_size / 224` (low
  resolution 50 -> 14 px at 64; the distortion's grid and sigma);
* edges: `edges_sobel` unless a Structured Edge model is given (then `edges`,
  the paper's SED);
* network: VGG-M with the same topology at `width` x the channels (fc6's
  kernel follows the input size);
* "ImageNet" model: there is none for synthetic data. A stand-in is made
  honestly: the reduced VGG-M is trained from random weights on a separate
  synthetic dataset (other seeds, so other class definitions; both styles,
  full images in clutter) and cached under `<out>/pretrain/`; every method
  then starts from it exactly as the real grid starts from imagenet-vgg-m;
* schedule: the released CUB/CARS schedules squeezed into `epochs` epochs and
  scaled by `lr_scale`; batch `batch_size` (few images per class, so smaller
  batches than the paper's 128 to get enough updates).

Everything is resumable (finished runs are skipped). The numbers measure
nothing about CUB or Stanford Cars: the report says so, and says column by
column whether CQD beat fine-tuning on this synthetic data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cqd_port.errors import CqdError

if TYPE_CHECKING:
    from cqd_port.experiments.settings import GridConfig

PAPER_INPUT = 224


@dataclass
class DemoConfig:
    """Sizes and schedule of the demo (defaults tuned to finish in minutes on two CPU cores)."""

    out: Path = Path("runs/demo")
    image_size: int = 64
    width: float = 0.25
    classes: int = 12
    train_per_class: int = 40
    test_per_class: int = 30
    draw_size: int = 128  # height of the generated images before preparation
    epochs: int = 10
    batch_size: int = 32
    lr_scale: float = 0.5
    pretrain_classes: int = 16  # per style
    pretrain_per_class: int = 30
    pretrain_epochs: int = 15
    pretrain_lr: float = 0.001  # Adam, for the stand-in only
    sed_model: Path | None = None
    device: str = "cpu"
    seed: int = 0
    tasks: list[str] | None = None
    methods: list[str] | None = None
    progress: bool = True
    # processes preparing data; 0: this process. A variant here is 840 small images (about 0.1 s of work):
    # a pool's spawned workers importing torch cost seconds each, 18 pools half a minute. None: prepare's default.
    workers: int | None = 0
    # False: the test set is scored after the last epoch only, not after each (a tenth of the evaluation time;
    # the weights and the final accuracy are the same, history.json has one test row, the last epoch's)
    evaluate_every_epoch: bool = False
    seeds: tuple[int, ...] = (0,)
    # lambda chosen per task on a validation split (the paper's 200/50 were chosen for CUB/Cars, not for this data)
    select: dict[str, tuple[float, ...]] | None = field(default_factory=lambda: {"lambda": (20.0, 50.0, 200.0)})
    lowres_kernel: str = "bilinear"  # "bicubic": the release's imresize defaults for the low-res columns
    a_cqd_start: str = "a_model"  # "imagenet": A-CQD as the released script ran it (= CQD)


@dataclass
class DemoOutcome:
    results_json: Path
    results_md: Path
    report: str
    seconds: float
    runs: dict[str, dict] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds of wall time per phase (data, stand-in, variants, runs)


def _dataset(root: Path, style: str, classes: int, train: int, test: int, size: int, seed: int) -> Path:
    """A synthetic dataset, generated once (a finished one has its synthetic.json written last)."""
    from cqd_port.data.synth import make_synthetic_dataset

    if (root / "synthetic.json").is_file():
        return root
    return make_synthetic_dataset(root, classes=classes, train_per_class=train, test_per_class=test, size=size, seed=seed, style=style)


def degradation_settings(image_size: int) -> dict[str, Any]:
    """DegradationConfig fields for `image_size`-pixel outputs: the paper's pixel parameters scaled from 224."""
    scale = image_size / PAPER_INPUT
    return {
        "out_size": image_size,
        "lowres_size": max(4, int(round(50 * scale))),
        "distortion_grid_start": max(1, int(round(8 * scale))),
        "distortion_grid_step": max(1, int(round(16 * scale))),
        "distortion_sigma": 4.0 * scale,
    }


def pretrain_standin(config: DemoConfig, progress: bool) -> Path:
    """The demo's stand-in for imagenet-vgg-m: a reduced VGG-M trained on separate synthetic data.

    NOT MatConvNet's ImageNet training: a from-scratch VGG-M with LRN on
    0-255 inputs and a few hundred images does not leave chance level with
    plain SGD in a CPU budget, so the stand-in is trained with what does:
    weights scaled layer by layer to unit output variance on a batch
    (LSUV, Mishkin & Matas 2016) and Adam. Only this stand-in is trained
    that way; every method of the grid then fine-tunes it with the
    MatConvNet SGD, as the real grid fine-tunes imagenet-vgg-m.
    Cached as `<out>/pretrain/final.pt` (the convert-weights checkpoint
    format, `meta.normalization` like an ImageNet model's: imageSize and the
    mean colour of its training images).
    """
    import torch
    from rich.progress import Progress

    from cqd_port.data.prepare import read_dataset
    from cqd_port.data.store import build_store
    from cqd_port.experiments.run import FINAL_MODEL
    from cqd_port.models.network import SimpleNetwork
    from cqd_port.models.vgg import init_state, vgg_m_specs
    from cqd_port.train.objective import class_scores
    from matconvnet_weights.convert import save_checkpoint

    folder = Path(config.out) / "pretrain"
    final = folder / FINAL_MODEL
    if final.is_file():
        return final
    size = (config.image_size, config.image_size)
    zero = np.zeros((1, 1, 3), dtype=np.float32)
    images, labels = [], []
    for offset, (style, seed) in enumerate((("birds", 1001), ("cars", 1002))):
        root = _dataset(
            Path(config.out) / "data" / f"pretrain-{style}", style, config.pretrain_classes, config.pretrain_per_class, 0, config.draw_size, seed
        )
        index = read_dataset("cub", root)
        decoded = build_store(index.root, [r.path for r in index.records], [r.label for r in index.records], size, average_image=zero)
        inputs, targets = decoded.batch(torch.arange(len(decoded)))
        images.append(inputs)
        labels.append(targets + offset * config.pretrain_classes)
    x_all = torch.cat(images)
    y_all = torch.cat(labels)
    average = x_all.mean(dim=(0, 2, 3))
    x_all -= average[None, :, None, None]

    num_classes = 2 * config.pretrain_classes
    specs = vgg_m_specs(num_classes=num_classes, width=config.width, input_size=config.image_size, dropout=0.5, softmax=False)
    generator = torch.Generator().manual_seed(config.seed + 1000)
    model = SimpleNetwork(specs, init_state(specs, seed=config.seed, method="xavierimproved"))
    with torch.no_grad():  # LSUV: unit output variance, layer after layer, on one batch
        probe = x_all[torch.randperm(len(x_all), generator=generator)[:128]]
        for spec in specs:
            if spec.type == "conv":
                std = float(model(probe, return_all=True)[spec.name].std())
                model.layer(spec.name).weight.div_(max(std, 1e-6))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.pretrain_lr)
    # Dropout draws from the global RNG: seed it (without disturbing the caller's) so the stand-in,
    # and so the whole demo, is the same on every run.
    with torch.random.fork_rng(), Progress(disable=not progress, transient=True) as bar:
        torch.manual_seed(config.seed + 2000)
        task = bar.add_task("pretraining the stand-in", total=config.pretrain_epochs)
        for _epoch in range(config.pretrain_epochs):
            model.train()
            order = torch.randperm(len(x_all), generator=generator)
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                loss = torch.nn.functional.cross_entropy(class_scores(model(x_all[batch])), y_all[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            bar.advance(task)
    model.eval()
    meta = {
        "normalization": {
            "imageSize": [config.image_size, config.image_size, 3],
            "averageImage": average.numpy().reshape(1, 1, 3).astype(np.float32),
            "interpolation": "bicubic",
        },
        "classes": {"name": [str(i + 1) for i in range(num_classes)], "description": []},
        "source": "SYNTHETIC stand-in for imagenet-vgg-m (cqd_port.experiments.demo.pretrain_standin)",
    }
    save_checkpoint(final, model.specs, {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta)
    return final


def grid_config(config: DemoConfig, standin: Path) -> GridConfig:
    """The `GridConfig` the demo runs Table 1 with."""
    from cqd_port.experiments.settings import GridConfig

    out = Path(config.out)
    return GridConfig(
        out=out,
        prepared=out / "prepared",
        models=out / "pretrain",
        cub_root=out / "data" / "birds",
        cars_root=out / "data" / "cars",
        sed_model=config.sed_model,
        device=config.device,
        workers=config.workers,
        seed=config.seed,
        pretrained={"vgg-m": standin},
        lr_scale=config.lr_scale,
        progress=False,
        synthetic=True,
        edges_method="edges" if config.sed_model else "edges_sobel",
        prepare_config=degradation_settings(config.image_size),
        batch_size=config.batch_size,
        lowres_kernel=config.lowres_kernel,
        evaluate_every_epoch=config.evaluate_every_epoch,
    )


def run_demo(config: DemoConfig) -> DemoOutcome:
    """Generate data, pretrain the stand-in, run Table 1's grid, write results; return the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import sys

    from cqd_port.experiments.grid import progress_line, run_grid
    from cqd_port.experiments.plan import plan_grid, schedule_grid
    from cqd_port.experiments.runfolder import FINISHED, RunFolder

    if config.image_size < 32:
        raise CqdError(f"demo image size {config.image_size} is too small for VGG-M; use 32 or more")
    started = time.perf_counter()
    out = Path(config.out)
    say = print if config.progress else (lambda *a, **k: None)
    say(f"cqd-port demo: Table 1 on SYNTHETIC data in {out} (not CUB, not Stanford Cars)")
    phases: dict[str, float] = {}
    mark = started

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    _dataset(out / "data" / "birds", "birds", config.classes, config.train_per_class, config.test_per_class, config.draw_size, 1)
    _dataset(out / "data" / "cars", "cars", config.classes, config.train_per_class, config.test_per_class, config.draw_size, 2)
    say("stand-in pretrained model: reduced VGG-M trained on separate synthetic data ...")
    phase("data")
    standin = pretrain_standin(config, config.progress)
    phase("stand-in")

    plan = plan_grid(1, config.tasks, config.methods, config.epochs, a_cqd_start=config.a_cqd_start)
    grid = grid_config(config, standin)
    catalog = grid.catalog()
    for variant in plan.variants():
        catalog.ensure(variant, config.progress)
    phase("data variants")

    timings: dict[str, dict] = {}
    keys = [n.key for n in schedule_grid(plan, catalog, config.seeds, config.select).runs()]

    def finished_runs() -> int:
        return sum(1 for k in keys if RunFolder(out / k).status() == FINISHED)

    terminal = config.progress and sys.stdout.isatty()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"), TimeElapsedColumn())
    with Progress(*columns, disable=not terminal) as bar:
        finished = finished_runs()
        task = bar.add_task("Table 1 runs", total=len(keys), completed=finished, last="")

        def on_run(key: str, record: dict) -> None:
            timings[key] = record
            acc = record.get("accuracy")
            done = finished_runs()
            bar.update(task, completed=done, last=f"{key} {acc:.1f}%" if acc is not None else key)
            if config.progress and not terminal:  # a log file, CI, nohup: one line per finished run
                print(progress_line(done, len(keys), key, record), flush=True)

        # rerun: a demo folder made with other settings (an older version, other --epochs) is retrained, not refused
        outcome = run_grid(plan, grid, on_run=on_run, seeds=config.seeds, select=config.select, rerun=True)
    phase(f"{len(keys)} runs")
    seconds = time.perf_counter() - started
    report = demo_report(outcome.results_json, outcome.markdown, config, seconds, phases)
    return DemoOutcome(outcome.results_json, outcome.results_md, report, seconds, timings, phases)


def cqd_vs_fine_tuning(results: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None]]:
    """Per task, from results.json: (task, fine-tuning, cqd, a_cqd) accuracies, None where a cell is missing or not run."""
    by_key = {(c["task"], c["method"]): c["accuracy"] for c in results["cells"]}
    return [
        (task, by_key.get((task, "fine_tuning")), by_key.get((task, "cqd")), by_key.get((task, "a_cqd")))
        for task in dict.fromkeys(c["task"] for c in results["cells"])
    ]


def verdict(value: float, reference: float, one_image: float) -> str:
    """'beats', 'ties' or 'does NOT beat': a difference of at most one test image (`one_image` points) is a tie."""
    difference = value - reference
    if abs(difference) <= one_image * (1 + 1e-6):
        return "ties (within one test image)"
    return "beats" if difference > 0 else "does NOT beat"


def _candidate_text(candidate: dict[str, Any]) -> str:
    """`0.1: 54.2%`, or `1: diverged at epoch 1` for a candidate without a result."""
    if candidate.get("val_accuracy") is None:
        return f"{candidate['run'].rsplit('/', 1)[-1]}: {candidate.get('status', 'no result')}"
    return f"{candidate['lambda']:g}: {candidate['val_accuracy']:.1f}%"


def _distiller_lines(results: dict[str, Any], wanted: set[str]) -> list[str]:
    """Each distiller vs fine-tuning and CQD per column: the paired difference and its interval, or 'tie'."""
    rows = [d for d in results.get("method_differences") or [] if d.get("n") and (not wanted or d["task"] in wanted)]
    if not rows:
        return []
    lines = ["", "Distillers vs fine-tuning and vs CQD, paired by seed (95% t-interval; tie: it contains 0):"]
    for d in rows:
        if d.get("low") is None:
            verdict_text = "one seed: no interval"
        else:
            verdict_text = "tie" if d["tie"] else ("better" if d["mean"] > 0 else "worse")
            verdict_text += f" [{d['low']:+.1f}, {d['high']:+.1f}]"
        lines.append(f"  {d['task']}: {d['method']} - {d['versus']} {d['mean']:+.1f} ({verdict_text})")
    return lines


def demo_report(results_json: Path, markdown: str, config: DemoConfig, seconds: float, phases: dict[str, float] | None = None) -> str:
    """The text the demo prints: the table, the honest column-by-column CQD verdict, the lambda chosen, the caveats."""
    from cqd_port.experiments.results import load_results

    results = load_results(results_json)
    one_image = 100.0 / max(1, config.classes * config.test_per_class)
    lines = [
        markdown.rstrip(),
        "",
        "THE DATA IS SYNTHETIC (drawn birds and cars, not CUB-200-2011 or Stanford Cars); "
        "the paper's numbers are printed only to show the shape of the comparison.",
        f"Networks: VGG-M topology at width x{config.width:g}, {config.image_size}x{config.image_size} inputs; "
        "pretrained stand-in for imagenet-vgg-m trained on separate synthetic data (no ImageNet model exists for it).",
        "Edge columns: " + ("the paper's Structured Edge Detector (--sed-model)." if config.sed_model else "Sobel edges (edges_sobel), not the paper's SED; pass --sed-model for SED."),
        "",
        f"CQD vs fine-tuning on this synthetic data, per column (one test image = {one_image:.2f} points"
        + (f"; means over seeds {', '.join(map(str, config.seeds))}" if len(config.seeds) > 1 else "")
        + "):",
    ]
    wanted = set(config.tasks or [])
    for task, ft, cqd, a_cqd in cqd_vs_fine_tuning(results):
        if wanted and task not in wanted:
            continue
        if ft is None or (cqd is None and a_cqd is None):
            lines.append(f"  {task}: not all runs finished")
            continue
        parts = []
        for name, value in (("CQD", cqd), ("A-CQD", a_cqd)):
            if value is not None:
                parts.append(f"{name} {value:.1f}% {verdict(value, ft, one_image)} fine-tuning {ft:.1f}% ({round(value, 1) - round(ft, 1):+.1f})")
        lines.append(f"  {task}: " + "; ".join(parts))
    lines += _distiller_lines(results, wanted)
    everything = [e for e in results.get("selection") or [] if e.get("chosen")]
    chosen = [e for e in everything if e["chosen"].get("T") is not None and e["method"] in ("cqd", "a_cqd")]
    weights = [e for e in everything if e not in chosen]
    if weights:
        lines += ["", "distillers' weights chosen on the same validation thirds:"]
        for entry in weights:
            tried = ", ".join(_candidate_text(c) for c in entry["candidates"])
            lines.append(f"  {entry['task']}/{entry['method']} seed {entry['seed']}: {tried} -> weight {entry['chosen']['lambda']:g}")
    if chosen:
        lines += ["", "lambda chosen on a validation third of each task's training set (T = 10):"]
        for entry in chosen:
            tried = ", ".join(f"{c['lambda']:g}: {c['val_accuracy']:.1f}%" for c in entry["candidates"])
            lines.append(f"  {entry['task']}/{entry['method']} seed {entry['seed']}: {tried} -> lambda {entry['chosen']['lambda']:g}")
        counts: dict[float, int] = {}
        for entry in chosen:
            counts[entry["chosen"]["lambda"]] = counts.get(entry["chosen"]["lambda"], 0) + 1
        lines.append("  chosen: " + ", ".join(f"lambda {k:g} x{v}" for k, v in sorted(counts.items())))
    spent = f" ({', '.join(f'{name} {value:.0f} s' for name, value in phases.items())})" if phases else ""
    lines += ["", f"results: {results_json} and {results_json.with_suffix('.md')}; wall time {seconds / 60:.1f} min{spent}"]
    return "\n".join(lines)
