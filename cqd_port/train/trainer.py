"""The epoch loop of `cnn_train_dag.m`, with checkpoints and exact resume.

One training step (`sgd_step`) is: forward in train mode (dropout on), the
summed objective, backward, one `MatConvNetSGD` update with the actual batch
size. The epoch loop (`train`) reshuffles the training set every epoch with a
generator seeded from `(seed, epoch)`, uses the last partial batch (as
`cnn_train_dag` does), sets the momentum to zero at the start of every epoch
(as `cnn_train_dag`'s `process_epoch`; `momentum_reset_each_epoch=False`
carries it over), seeds dropout from `(seed, epoch)` as well, evaluates
on the test set in test mode, appends to the history and writes the run
folder: `checkpoint.pt` (atomic, every epoch), `history.json`,
`net-train.pdf` and, at the end, `evaluation.json`. A rerun on the same
folder continues after the last finished epoch; since an epoch's randomness
depends only on `(seed, epoch)`, an interrupted epoch replays identically
and the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_path, atomic_write_json
from cqd_port.train.checkpoint import (
    CHECKPOINT_NAME,
    TrainingCheckpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from cqd_port.train.device import configure_determinism, select_device
from cqd_port.train.evaluate import Evaluation, evaluate
from cqd_port.train.objective import Objective, class_scores
from cqd_port.train.schedules import CUB_SCHEDULE, learning_rate, validate_schedule
from cqd_port.train.sgd import MatConvNetSGD, Multipliers

HISTORY_NAME = "history.json"
PLOT_NAME = "net-train.pdf"
EVALUATION_NAME = "evaluation.json"

# Options that change the numbers a run produces: a checkpoint made with other
# values cannot be continued. (`epochs` may grow: the run then goes on.)
_RESUME_KEYS = ("batch_size", "schedule", "momentum", "weight_decay", "seed", "label_range", "momentum_reset_each_epoch")


class TrainingDiverged(CqdError):
    """The objective became NaN or infinite; nothing was updated with it."""


@dataclass
class TrainConfig:
    """How `train` runs (defaults: the paper's vgg-m setting on CUB).

    `schedule` gives the learning rate per epoch (the last value repeats);
    `device` is `auto`, `cpu`, `cuda` or `cuda:N`; `label_range` restricts
    evaluation to some outputs (see `cqd_port.train.evaluate`); `lrn_mode` is
    the LRN the caller builds its networks with (recorded here so a run
    folder says which); `tf32` allows TF32 on CUDA (off: strict fp32 like
    MatConvNet); `eval_batch_size` defaults to `batch_size`;
    `evaluate_every_epoch` False evaluates after the last epoch only; `plot`
    False skips `net-train.pdf`, `plot_title` heads it. `momentum_reset_each_epoch` sets the momentum
    to zero at the start of every epoch, as the release's `cnn_train_dag.m`
    does (its `process_epoch` starts each epoch with fresh zero momentum);
    False carries it over the epoch boundary, as `torch.optim.SGD` would.
    """

    epochs: int = 30
    batch_size: int = 128
    schedule: tuple[float, ...] = CUB_SCHEDULE
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    label_range: tuple[int, int] | None = None
    lrn_mode: str = "exact"
    tf32: bool = False
    eval_batch_size: int | None = None
    evaluate_every_epoch: bool = True
    plot: bool = True
    plot_title: str = ""  # heads net-train.pdf: which run, which task, SYNTHETIC data
    momentum_reset_each_epoch: bool = True

    def __post_init__(self) -> None:
        self.schedule = validate_schedule(self.schedule)
        if self.label_range is not None and not isinstance(self.label_range, int):
            self.label_range = tuple(int(v) for v in self.label_range)  # type: ignore[assignment]
        if self.epochs < 1:
            raise CqdError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise CqdError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise CqdError(f"num_workers must be >= 0, got {self.num_workers}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schedule"] = list(self.schedule)
        data["label_range"] = list(self.label_range) if isinstance(self.label_range, tuple) else self.label_range
        return data


@dataclass
class StepStats:
    """One step's summed losses (before the update) and its number of top-1 errors."""

    total: float
    softmaxlog: float
    distill: float
    errors: int
    batch_size: int


@dataclass
class TrainResult:
    """What `train` leaves behind: the history, the last test evaluation, where."""

    history: list[dict[str, Any]]
    evaluation: Evaluation | None
    run_dir: Path
    epochs_done: int
    resumed_from: int = 0
    steps: int = 0
    images_per_second: float = field(default=float("nan"))

    @property
    def accuracy(self) -> float | None:
        return None if self.evaluation is None else self.evaluation.accuracy


def sgd_step(
    model: torch.nn.Module,
    optimizer: MatConvNetSGD,
    objective: Objective,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    lr: float,
) -> StepStats:
    """One `cnn_train_dag` iteration: train-mode forward, backward of the summed objective, update.

    The losses are those *before* the update (what MatConvNet accumulates in
    its statistics). Raises `TrainingDiverged` before touching the weights
    if the objective is not finite. This is the one step used by the epoch
    loop and by the training parity replay.
    """
    model.train()
    optimizer.zero_grad()
    scores = model(inputs)
    value = objective(scores, labels, teacher_logits)
    if not bool(torch.isfinite(value.total)):
        raise TrainingDiverged(f"objective is {float(value.total.detach())}")
    value.total.backward()
    optimizer.step(lr, int(inputs.shape[0]))
    with torch.no_grad():
        errors = int((class_scores(scores).argmax(dim=1) != labels).sum())
    return StepStats(
        total=float(value.total.detach()),
        softmaxlog=float(value.softmaxlog.detach()),
        distill=float(value.distill.detach()),
        errors=errors,
        batch_size=int(inputs.shape[0]),
    )


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for one epoch's shuffling (`stream` 0) or dropout (`stream` 1)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)]).generate_state(2, np.uint64)[0] >> 1)


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches: a permutation seeded by `(seed, epoch)`, cut in order, last one partial.

    As `cnn_train_dag` (`randperm` of the training set every epoch, batches
    `t:t+batchSize-1`, the last one shorter). The permutation comes from
    PyTorch's generator, not MATLAB's `randperm`, so the order differs from
    the original's; unlike PyTorch's `drop_last=True` habit, nothing is dropped.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))
    order = torch.randperm(num_items, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, num_items, batch_size)]


def _check_resume(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    for key in _RESUME_KEYS:
        if key in saved and saved[key] != current[key]:
            raise CqdError(
                f"{path} was made with {key}={saved[key]!r}, this run has {key}={current[key]!r}; "
                "rerun with the same options or use a fresh run folder"
            )
    if "objective" in saved and saved["objective"] != current["objective"]:
        raise CqdError(
            f"{path} was made with objective {saved['objective']}, this run has {current['objective']}; "
            "use a fresh run folder"
        )


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def train(
    model: torch.nn.Module,
    train_set: Dataset,
    test_set: Dataset | None,
    config: TrainConfig,
    objective: Objective,
    run_dir: str | Path,
    teacher_logits: torch.Tensor | None = None,
    multipliers: Mapping[str, Multipliers | tuple[float, float]] | None = None,
    progress: bool = True,
    on_step: Callable[[int, int, StepStats], None] | None = None,
) -> TrainResult:
    """Train `model` in place for `config.epochs` epochs, checkpointing into `run_dir`.

    `train_set` and `test_set` yield `(image CHW float32, label 0-based,
    index)`; `teacher_logits[index]` is the teacher's output for training
    item `index` (required by a CQD objective). `multipliers` maps
    state-dict names to `(lr_mult, wd_mult)`. `on_step(epoch, step, stats)`
    is called after every update (1-based epoch and step). With `test_set`
    None there is no evaluation. If `run_dir` holds a checkpoint the run
    continues after its epoch (or returns at once if it is finished).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if objective.needs_teacher and teacher_logits is None:
        raise CqdError("the CQD objective needs teacher_logits (one row per training image); see cqd_port.train.teacher")
    specs = getattr(model, "specs", None)
    if specs and specs[-1].type == "softmax":
        raise CqdError(
            f"the network ends in softmax layer '{specs[-1].name}'; the losses need logits: train the network "
            f"without it (e.g. model.truncated('{specs[-2].name if len(specs) > 1 else specs[-1].name}'))"
        )
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train == 0:
        raise CqdError("the training set is empty; check the training split")
    if teacher_logits is not None and teacher_logits.shape[0] != n_train:
        raise CqdError(
            f"teacher_logits has {teacher_logits.shape[0]} rows, the training set {n_train} images; "
            "recompute them on this training set"
        )

    device = select_device(config.device)
    configure_determinism(config.tf32, device)
    model.to(device)
    optimizer = MatConvNetSGD(model.named_parameters(), config.momentum, config.weight_decay, multipliers)
    saved_config = {**config.to_dict(), "objective": objective.to_dict()}

    history: list[dict[str, Any]] = []
    start_epoch = 1
    ckpt_path = run_dir / CHECKPOINT_NAME
    if ckpt_path.exists():
        ckpt = load_training_checkpoint(ckpt_path)
        _check_resume(ckpt.config, saved_config, ckpt_path)
        try:
            model.load_state_dict({k: v.to(device) for k, v in ckpt.model.items()})
        except RuntimeError as exc:
            raise CqdError(f"{ckpt_path} does not fit this network ({str(exc).splitlines()[0]}); use a fresh run folder") from None
        optimizer.load_state_dict(ckpt.optimizer)
        history = list(ckpt.history)
        start_epoch = ckpt.epoch + 1
    resumed_from = start_epoch - 1

    evaluation: Evaluation | None = None
    eval_path = run_dir / EVALUATION_NAME
    if start_epoch > config.epochs:
        # Finished run: give back what it left, redoing only what a crash after the last
        # checkpoint may have left unwritten (history.json, the plot, evaluation.json).
        atomic_write_json(run_dir / HISTORY_NAME, history)
        if config.plot and not (run_dir / PLOT_NAME).exists():
            plot_history(history, run_dir / PLOT_NAME, config.plot_title)
        if test_set is not None:
            evaluation = Evaluation.load(eval_path) if eval_path.exists() else None
            if evaluation is None:
                evaluation = _evaluate(model, test_set, config, device, None)
                evaluation.save(eval_path)
        return TrainResult(history, evaluation, run_dir, resumed_from, resumed_from)

    teacher_cpu = teacher_logits.float().cpu() if teacher_logits is not None else None
    steps = 0
    images = 0
    t_start = time.perf_counter()
    with _progress(progress) as bar:
        epoch_task = bar.add_task("epochs", total=config.epochs, completed=start_epoch - 1, info="")
        for epoch in range(start_epoch, config.epochs + 1):
            lr = learning_rate(config.schedule, epoch)
            if config.momentum_reset_each_epoch:
                optimizer.reset_momentum()  # cnn_train_dag's process_epoch: each epoch starts at zero momentum
            batches = epoch_batches(n_train, config.batch_size, config.seed, epoch)
            loader = DataLoader(
                train_set,
                batch_sampler=batches,
                num_workers=config.num_workers,
                generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 2)),
            )
            step_task = bar.add_task(f"epoch {epoch}", total=len(batches), info=f"lr {lr:g}")
            sums = {"total": 0.0, "softmaxlog": 0.0, "distill": 0.0, "errors": 0, "n": 0}
            t_epoch = time.perf_counter()
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(epoch_seed(config.seed, epoch, 1))  # dropout masks of this epoch
                for step, (inputs, labels, indices) in enumerate(loader, start=1):
                    labels = torch.as_tensor(labels).long().reshape(-1)
                    indices = torch.as_tensor(indices).long().reshape(-1)
                    teacher = teacher_cpu[indices].to(device) if teacher_cpu is not None else None
                    try:
                        stats = sgd_step(model, optimizer, objective, inputs.to(device), labels.to(device), teacher, lr)
                    except TrainingDiverged as exc:
                        kept = f"the last good checkpoint (epoch {epoch - 1}) is kept in {ckpt_path}" if epoch > 1 else "no epoch had finished, so there is no checkpoint"
                        raise TrainingDiverged(
                            f"training diverged in {run_dir}: {exc} at epoch {epoch}, step {step} (learning rate {lr:g}); "
                            f"lower the learning rate (e.g. scale the schedule by 0.1) and rerun; {kept}"
                        ) from None
                    steps += 1
                    images += stats.batch_size
                    for key in ("total", "softmaxlog", "distill", "errors"):
                        sums[key] += getattr(stats, key)
                    sums["n"] += stats.batch_size
                    bar.update(step_task, advance=1, info=f"lr {lr:g} obj {sums['total'] / sums['n']:.4g} err {sums['errors'] / sums['n']:.3f}")
                    if on_step is not None:
                        on_step(epoch, step, stats)
            bar.remove_task(step_task)
            n = sums["n"]
            record: dict[str, Any] = {
                "epoch": epoch,
                "learning_rate": lr,
                "train": {
                    "objective": sums["softmaxlog"] / n,
                    "distill": sums["distill"] / n,
                    "total": sums["total"] / n,
                    "top1err": sums["errors"] / n,
                    "num_images": n,
                },
                "seconds": time.perf_counter() - t_epoch,
            }
            last = epoch == config.epochs
            if test_set is not None and (config.evaluate_every_epoch or last):
                evaluation = _evaluate(model, test_set, config, device, bar)
                record["test"] = {
                    "objective": evaluation.objective,
                    "top1err": evaluation.top1err,
                    "accuracy": evaluation.accuracy,
                    "num_images": evaluation.num_images,
                }
            history.append(record)
            save_training_checkpoint(
                ckpt_path,
                TrainingCheckpoint(epoch, model.state_dict(), optimizer.state_dict(), history, saved_config),
            )
            atomic_write_json(run_dir / HISTORY_NAME, history)
            if config.plot:
                plot_history(history, run_dir / PLOT_NAME, config.plot_title)
            if last and evaluation is not None:
                evaluation.save(eval_path)
            bar.update(epoch_task, advance=1, info=_epoch_info(record))
    elapsed = time.perf_counter() - t_start
    return TrainResult(
        history, evaluation, run_dir, config.epochs, resumed_from, steps, images / elapsed if elapsed > 0 else float("nan")
    )


def _evaluate(model: torch.nn.Module, test_set: Dataset, config: TrainConfig, device: torch.device, bar: Any) -> Evaluation:
    return evaluate(
        model,
        test_set,
        label_range=config.label_range,
        batch_size=config.eval_batch_size or config.batch_size,
        device=device,
        num_workers=config.num_workers,
        progress=bar,
    )


def _epoch_info(record: Mapping[str, Any]) -> str:
    text = f"train err {record['train']['top1err']:.3f}"
    if "test" in record:
        text += f" test acc {record['test']['accuracy']:.1f}%"
    return text


def history_figure(history: Sequence[Mapping[str, Any]], title: str = "") -> Any:
    """The `net-train.pdf` figure as `cnn_train_dag` draws it: the losses and top-1 error per epoch, train and test.

    Unlike `cnn_train_dag`'s single "objective" panel, the softmax-log loss and
    (for CQD runs, whose history has a non-zero `distill`) the distillation
    term are drawn in separate panels, so the plot says which is which;
    `title` (run, task, SYNTHETIC) heads the page. A bare `Figure` with the
    Agg canvas: no pyplot, so the caller's matplotlib backend and figure
    registry are left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    distills = any(float(h.get("train", {}).get("distill", 0.0) or 0.0) != 0.0 for h in history)
    panels = [("objective", "softmax-log loss")]
    if distills:
        panels.append(("distill", "distillation term (cross-entropy to the teacher, before lambda)"))
    panels.append(("top1err", "top-1 error"))
    fig = Figure(figsize=(5 * len(panels), 4.4 if title else 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (key, label) in zip(axes, panels):
        for split, style in (("train", ".-"), ("test", "o--")):
            pts = [(e, h[split][key]) for e, h in zip(epochs, history) if split in h and key in h[split] and math.isfinite(h[split][key])]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
        ax.grid(True)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Write `history_figure(history, title)` to `path` (the run's `net-train.pdf`), atomically."""
    fig = history_figure(history, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="pdf")
