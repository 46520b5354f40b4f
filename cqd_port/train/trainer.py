"""The epoch loop of `cnn_train_dag.m`, with checkpoints and exact resume.

One training step (`train_step`) is: forward in train mode (dropout on), the
summed objective, backward, one `MatConvNetSGD` update with the actual batch
size; it returns its losses and error count as tensors on the device and
never waits for the device (no `.item()`, `float()`, `bool()` on a tensor):
the epoch loop adds them up on the device and reads them once per epoch,
with the NaN check. The epoch loop (`train`) resets the momentum at the start
of every epoch as `cnn_train_dag`'s `process_epoch` does (option
`momentum_reset_each_epoch`), reshuffles the training set every epoch with a
generator seeded from `(seed, epoch)` (an index permutation; the images sit
in an `ImageStore` on the device), uses the last partial batch (as
`cnn_train_dag` does), seeds dropout from `(seed, epoch)` as well,
evaluates on the test set in test mode, and writes the run folder lean:
`checkpoint.pt` (the latest epoch only, atomic), `history.json`, `metrics.csv`
(and TensorBoard events when `tensorboard` is installed; `metrics`), and at the
end `net-train.pdf` and `evaluation.json`. A rerun on the same folder
continues after the last finished epoch; since an epoch's randomness
depends only on `(seed, epoch)` and the momentum restarts at zero, an
interrupted epoch replays identically and the final weights equal those of
an uninterrupted run.

`train` is three parts: `_resume` (checkpoint and settings check),
`_run_epoch` (one epoch over the store), `_write_outputs` (files).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cqd_port.data.store import ImageStore, as_image_store
from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_path, atomic_write_json
from cqd_port.train.checkpoint import (
    CHECKPOINT_NAME,
    TrainingCheckpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from cqd_port.train.device import configure_determinism, select_device
from cqd_port.train.distillers import PARAMETER_PREFIX, Distiller, build_distiller
from cqd_port.train.evaluate import Evaluation, evaluate
from cqd_port.train.metrics import write_metrics
from cqd_port.train.objective import Objective, class_scores
from cqd_port.train.schedules import CUB_SCHEDULE, learning_rate, validate_schedule
from cqd_port.train.sgd import OPTIMIZERS, MatConvNetSGD, Multipliers, TorchSGD, make_optimizer
from cqd_port.train.teacher import TeacherTargets

HISTORY_NAME = "history.json"
PLOT_NAME = "net-train.pdf"
EVALUATION_NAME = "evaluation.json"

# Options that change the numbers a run produces: a checkpoint made with other
# values cannot be continued. (`epochs` may grow: the run then goes on.)
_RESUME_KEYS = (
    "batch_size",
    "schedule",
    "momentum",
    "weight_decay",
    "seed",
    "label_range",
    "lrn_mode",
    "tf32",
    "momentum_reset_each_epoch",
    "optimizer",
)

_BEFORE_THE_SETTING = {"momentum_reset_each_epoch": False, "optimizer": "matconvnet"}
"""What a checkpoint written before a setting existed ran with."""

BatchOrder = Callable[[int, int], list[list[int]]]
"""`batch_order(epoch, num_items)` -> the epoch's batches of item indices (default `epoch_batches`)."""


class TrainingDiverged(CqdError):
    """The objective became NaN or infinite; the checkpoint of the last good epoch is kept."""


@dataclass
class TrainConfig:
    """How `train` runs (defaults: the paper's vgg-m setting on CUB).

    `schedule` gives the learning rate per epoch (the last value repeats);
    `device` is `auto`, `cpu`, `cuda` or `cuda:N`; `label_range` restricts
    evaluation to some outputs (see `cqd_port.train.evaluate`); `lrn_mode` is
    the LRN the caller builds its networks with (recorded here so a run
    folder says which, and a resume must match it); `tf32` allows TF32 on
    CUDA (off: strict fp32 like MatConvNet); `eval_batch_size` defaults to
    `batch_size`; `evaluate_every_epoch` False evaluates after the last epoch
    only; `plot` False skips `net-train.pdf`, `plot_title` heads it,
    `plot_every` N > 0 also draws it
    every N epochs (default: at the end only); `momentum_reset_each_epoch`
    False carries the momentum over epoch boundaries (not the release's
    behaviour). `checkpoint_interval` (seconds) writes the checkpoint after
    an epoch only once that long has passed since the last one (or the
    start), and always after the last epoch: a crash then loses at most that
    much training (resuming is bit-identical from any epoch), and short GPU
    epochs do not wait on a 0.8 GB write each (0: every epoch).
    `num_workers` is accepted for old callers and ignored: the
    data path has no workers. `optimizer` is `matconvnet` (the release's
    SGD, `MatConvNetSGD`) or `torch` (`torch.optim.SGD`, `TorchSGD`).
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
    plot_every: int = 0
    momentum_reset_each_epoch: bool = True
    optimizer: str = "matconvnet"
    checkpoint_interval: float = 0.0

    def __post_init__(self) -> None:
        self.schedule = validate_schedule(self.schedule)
        check_checkpoint_interval(self.checkpoint_interval, "checkpoint interval")
        if self.optimizer not in OPTIMIZERS:
            raise CqdError(f"optimizer '{self.optimizer}': use {' or '.join(OPTIMIZERS)}")
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


def check_checkpoint_interval(seconds: float, name: str) -> None:
    """`CqdError` naming `name` (the option or key the user set) unless `seconds` is finite and >= 0."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise CqdError(f"{name}: {seconds:g} must be seconds >= 0 (0: a checkpoint after every epoch; default 60)")


class StepTensors(NamedTuple):
    """One step's summed losses (before the update) and top-1 error count, as 0-d tensors on the device."""

    total: torch.Tensor
    softmaxlog: torch.Tensor
    distill: torch.Tensor
    errors: torch.Tensor
    batch_size: int


@dataclass
class StepStats:
    """One step's summed losses (before the update) and its number of top-1 errors, read to the host."""

    total: float
    softmaxlog: float
    distill: float
    errors: int
    batch_size: int

    @classmethod
    def read(cls, step: StepTensors) -> "StepStats":
        values = torch.stack([step.total.detach().double(), step.softmaxlog.detach().double(), step.distill.detach().double(), step.errors.double()]).tolist()
        return cls(values[0], values[1], values[2], int(values[3]), step.batch_size)


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


def train_step(
    model: torch.nn.Module,
    optimizer: MatConvNetSGD,
    objective: Objective,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    lr: float,
    distiller: Distiller | None = None,
    teacher_targets: Mapping[str, torch.Tensor] | None = None,
) -> StepTensors:
    """One `cnn_train_dag` iteration: train-mode forward, backward of the summed objective, update.

    A `distill` objective also needs the `distiller` (attached to `model`; its
    parameters in `optimizer`) and f's `teacher_targets` for the batch.

    Nothing here waits for the device: the losses (those *before* the
    update, what MatConvNet accumulates in its statistics) and the error
    count come back as device tensors, labels are not range-checked per step
    (`train` checks them once), and a non-finite objective is NOT caught
    here (the epoch loop checks once per epoch; `sgd_step` checks at once).
    """
    model.train()
    optimizer.zero_grad()
    if distiller is None:
        scores = model(inputs)
        value = objective(scores, labels, teacher_logits, check_labels=False)
    else:
        with distiller.capturing():
            scores = model(inputs)
        term = distiller(scores, labels, teacher_targets or {})
        value = objective(scores, labels, teacher_logits, check_labels=False, distill_term=term)
    value.total.backward()
    optimizer.step(lr, int(inputs.shape[0]))
    with torch.no_grad():
        errors = (class_scores(scores).argmax(dim=1) != labels).sum()
    return StepTensors(value.total.detach(), value.softmaxlog.detach(), value.distill.detach(), errors, int(inputs.shape[0]))


def sgd_step(
    model: torch.nn.Module,
    optimizer: MatConvNetSGD | TorchSGD,
    objective: Objective,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    lr: float,
) -> StepStats:
    """`train_step` for callers that want numbers at once (the step-by-step parity replay, benchmarks).

    Raises `TrainingDiverged` before touching the weights if the objective
    is not finite (this check, and reading the losses, wait for the device).
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
        errors = (class_scores(scores).argmax(dim=1) != labels).sum()
    return StepStats.read(StepTensors(value.total, value.softmaxlog, value.distill, errors, int(inputs.shape[0])))


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
        # A checkpoint from before a setting existed ran with that setting's old behaviour.
        before = saved.get(key, _BEFORE_THE_SETTING.get(key, current[key]))
        if before != current[key]:
            raise CqdError(
                f"{path} was made with {key}={before!r}, this run has {key}={current[key]!r}; "
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


@dataclass
class _Run:
    """What the three parts of `train` share."""

    model: torch.nn.Module
    optimizer: MatConvNetSGD
    objective: Objective
    config: TrainConfig
    device: torch.device
    train_store: ImageStore
    test_store: ImageStore | None
    teacher: torch.Tensor | None
    run_dir: Path
    saved_config: dict[str, Any]
    history: list[dict[str, Any]]
    start_epoch: int
    distiller: Distiller | None = None
    targets: TeacherTargets | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME


def train(
    model: torch.nn.Module,
    train_set: Any,
    test_set: Any | None,
    config: TrainConfig,
    objective: Objective,
    run_dir: str | Path,
    teacher_logits: torch.Tensor | None = None,
    multipliers: Mapping[str, Multipliers | tuple[float, float]] | None = None,
    progress: bool = True,
    on_step: Callable[[int, int, StepTensors], None] | None = None,
    batch_order: BatchOrder | None = None,
    teacher_targets: TeacherTargets | None = None,
    on_epoch: Callable[[int, Mapping[str, Any]], None] | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `model` in place for `config.epochs` epochs, checkpointing into `run_dir`.

    `train_set` and `test_set` are `ImageStore`s (or Datasets of `(image
    CHW float32, label 0-based, index)`, decoded once into one);
    `teacher_logits[index]` is the teacher's output for training item
    `index` (required by a CQD objective). `multipliers` maps state-dict
    names to `(lr_mult, wd_mult)`. `on_step(epoch, step, tensors)` is called
    after every update (1-based epoch and step) with the step's device
    tensors (reading them waits for the device). `batch_order(epoch, n)`
    replaces the seeded shuffling (e.g. a recorded order). With `test_set`
    None there is no evaluation. If `run_dir` holds a checkpoint the run
    continues after its epoch (or returns at once if it is finished).
    A `distill` objective (`Objective.for_method`) needs `teacher_targets`
    (`cqd_port.train.teacher.teacher_targets`, rows indexed like `train_set`);
    its `Distiller` is built here, its parameters trained and saved with g's.
    `on_epoch(epoch, record)` is called after each epoch's outputs are written (e.g. a line when bars are off);
    `on_resume(epoch)` when a checkpoint makes the run continue at `epoch` (> 1).
    """
    run = _resume(model, train_set, test_set, config, objective, Path(run_dir), teacher_logits, multipliers, teacher_targets)
    if on_resume is not None and 1 < run.start_epoch <= config.epochs:
        on_resume(run.start_epoch)
    if run.start_epoch > config.epochs:
        return _finished(run)
    steps = images = 0
    evaluation: Evaluation | None = None
    t_start = last_checkpoint = time.perf_counter()
    order = batch_order or (lambda epoch, n: epoch_batches(n, config.batch_size, config.seed, epoch))
    with _progress(progress) as bar:
        epoch_task = bar.add_task("epochs", total=config.epochs, completed=run.start_epoch - 1, info="")
        for epoch in range(run.start_epoch, config.epochs + 1):
            record = _run_epoch(run, epoch, order(epoch, len(run.train_store)), bar, on_step)
            steps += record.pop("_steps")
            images += record["train"]["num_images"]
            last = epoch == config.epochs
            if run.test_store is not None and (config.evaluate_every_epoch or last):
                evaluation = _evaluate(run.model, run.test_store, config, run.device, bar)
                record["test"] = {
                    "objective": evaluation.objective,
                    "top1err": evaluation.top1err,
                    "accuracy": evaluation.accuracy,
                    "num_images": evaluation.num_images,
                }
            run.history.append(record)
            checkpoint = last or time.perf_counter() - last_checkpoint >= config.checkpoint_interval
            _write_outputs(run, epoch, evaluation if last else None, checkpoint)
            if checkpoint:
                last_checkpoint = time.perf_counter()
            bar.update(epoch_task, advance=1, info=_epoch_info(record))
            if on_epoch is not None:
                on_epoch(epoch, record)
    if run.distiller is not None:
        run.distiller.detach_hooks()
    elapsed = time.perf_counter() - t_start
    return TrainResult(
        run.history, evaluation, run.run_dir, config.epochs, run.start_epoch - 1, steps, images / elapsed if elapsed > 0 else float("nan")
    )


def _resume(
    model: torch.nn.Module,
    train_set: Any,
    test_set: Any | None,
    config: TrainConfig,
    objective: Objective,
    run_dir: Path,
    teacher_logits: torch.Tensor | None,
    multipliers: Mapping[str, Multipliers | tuple[float, float]] | None,
    teacher_targets: TeacherTargets | None = None,
) -> _Run:
    """Check the inputs, put model, data and teacher on the device, continue from a checkpoint if any."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if objective.needs_teacher and teacher_logits is None:
        raise CqdError("the CQD objective needs teacher_logits (one row per training image); see cqd_port.train.teacher")
    specs = getattr(model, "specs", None)
    if specs and specs[-1].type == "softmax":
        raise CqdError(
            f"the network ends in softmax layer '{specs[-1].name}'; the losses need logits: train the network "
            f"without it (e.g. model.truncated('{specs[-2].name if len(specs) > 1 else specs[-1].name}'))"
        )
    if len(train_set) == 0:
        raise CqdError("the training set is empty; check the training split")
    n_train = len(train_set)
    if teacher_logits is not None and teacher_logits.shape[0] != n_train:
        raise CqdError(
            f"teacher_logits has {teacher_logits.shape[0]} rows, the training set {n_train} images; "
            "recompute them on this training set"
        )
    device = select_device(config.device)
    configure_determinism(config.tf32, device)
    model.to(device)
    train_store = as_image_store(train_set).to(device)
    test_store = as_image_store(test_set).to(device) if test_set is not None else None
    _check_labels(model, train_store)
    distiller, targets = _distillation(objective, model, train_store, teacher_targets, config.seed, device)
    parameters = list(model.named_parameters())
    if distiller is not None:
        parameters += list(distiller.named_parameters(prefix=PARAMETER_PREFIX))
    optimizer = make_optimizer(config.optimizer, parameters, config.momentum, config.weight_decay, multipliers)
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
        if distiller is not None:
            distiller.load_state_dict({k: v.to(device) for k, v in ckpt.distiller.items()})
        optimizer.load_state_dict(ckpt.optimizer)
        history = list(ckpt.history)
        start_epoch = ckpt.epoch + 1
    teacher = teacher_logits.float().to(device) if teacher_logits is not None else None
    return _Run(model, optimizer, objective, config, device, train_store, test_store, teacher, run_dir, saved_config, history, start_epoch, distiller, targets)


def _distillation(
    objective: Objective, model: torch.nn.Module, train_store: ImageStore, teacher_targets: TeacherTargets | None, seed: int, device: torch.device
) -> tuple[Distiller | None, TeacherTargets | None]:
    """For a `distill` objective: f's targets on the device and the distiller attached to g (connector seeded by `seed`)."""
    if not objective.needs_teacher_targets:
        return None, None
    if teacher_targets is None:
        raise CqdError(f"the {objective.distill.method} objective needs teacher_targets (f's outputs per training image); see cqd_port.train.teacher.teacher_targets")  # type: ignore[union-attr]
    if teacher_targets.num_items != len(train_store):
        raise CqdError(f"teacher targets cover {teacher_targets.num_items} images, the training set {len(train_store)}; compute them on this training set")
    distiller = build_distiller(objective.distill, model, train_store.batch([0])[0], teacher_targets.item_shapes, seed)  # type: ignore[arg-type]
    return distiller.to(device), teacher_targets.to(device)


def _check_labels(model: torch.nn.Module, store: ImageStore) -> None:
    """Once per run (the step does not check): every training label is an output of the network."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        outputs = class_scores(model(store.batch([0])[0])).shape[1]
        model.train(was_training)
    labels = store.labels
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= outputs:
        raise CqdError(
            f"training labels span {low}..{high} but the network has {outputs} outputs; "
            "labels must be 0-based class indices below the classifier's width"
        )


def _run_epoch(run: _Run, epoch: int, batches: Sequence[Sequence[int]], bar: Any, on_step: Callable | None) -> dict[str, Any]:
    """One epoch over the store; the sums stay on the device and are read once, at the end."""
    config, device = run.config, run.device
    lr = learning_rate(config.schedule, epoch)
    if config.momentum_reset_each_epoch:
        run.optimizer.reset_momentum()  # cnn_train_dag's process_epoch starts every epoch at zero momentum
    order = torch.tensor([i for b in batches for i in b], dtype=torch.long).to(device, non_blocking=True)
    sizes = [len(b) for b in batches]
    step_task = bar.add_task(f"epoch {epoch}", total=len(batches), info=f"lr {lr:g}")
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # total, softmaxlog, distill, errors
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    t_epoch = time.perf_counter()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(epoch_seed(config.seed, epoch, 1))  # dropout masks of this epoch
        start = 0
        for step, size in enumerate(sizes, start=1):
            index = order[start : start + size]
            start += size
            inputs, labels = run.train_store.batch(index)
            teacher = run.teacher[index] if run.teacher is not None else None
            targets = run.targets.batch(index) if run.targets is not None else None
            out = train_step(run.model, run.optimizer, run.objective, inputs, labels, teacher, lr, run.distiller, targets)
            sums += torch.stack([out.total.double(), out.softmaxlog.double(), out.distill.double(), out.errors.double()])
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out.total), step, first_bad)
            bar.update(step_task, advance=1)
            if on_step is not None:
                on_step(epoch, step, out)
    bar.remove_task(step_task)
    total, softmaxlog, distill, errors = sums.tolist()
    bad = int(first_bad)
    if bad >= 0:
        kept = (
            f"the last good checkpoint (epoch {epoch - 1}) is kept in {run.checkpoint_path}"
            if epoch > 1
            else "no epoch had finished, so there is no checkpoint"
        )
        raise TrainingDiverged(
            f"training diverged in {run.run_dir}: the objective became NaN or infinite at epoch {epoch}, step {bad} "
            f"(learning rate {lr:g}); lower the learning rate (e.g. scale the schedule by 0.1) and rerun; {kept}"
        )
    n = sum(sizes)
    return {
        "epoch": epoch,
        "learning_rate": lr,
        "train": {
            "objective": softmaxlog / n,
            "distill": distill / n,
            "total": total / n,
            "top1err": errors / n,
            "num_images": n,
        },
        "seconds": time.perf_counter() - t_epoch,
        "_steps": len(sizes),
    }


def _write_outputs(run: _Run, epoch: int, final_evaluation: Evaluation | None, checkpoint: bool) -> None:
    """The latest checkpoint (replacing the previous one) when due, the history; the plot and evaluation at the end.

    history.json runs ahead of a skipped checkpoint (the epochs can be watched); a resume restarts from the
    checkpoint's own history and rewrites it.
    """
    config = run.config
    if checkpoint:
        save_training_checkpoint(
            run.checkpoint_path,
            TrainingCheckpoint(
                epoch, run.model.state_dict(), run.optimizer.state_dict(), run.history, run.saved_config,
                run.distiller.state_dict() if run.distiller is not None else {},
            ),
        )
    _write_history(run)
    last = epoch == config.epochs
    if config.plot and (last or (config.plot_every > 0 and epoch % config.plot_every == 0)):
        plot_history(run.history, run.run_dir / PLOT_NAME, config.plot_title)
    if last and final_evaluation is not None:
        final_evaluation.save(run.run_dir / EVALUATION_NAME)


def _write_history(run: _Run) -> None:
    """history.json and the metrics files made from the same records (metrics.csv, TensorBoard events)."""
    atomic_write_json(run.run_dir / HISTORY_NAME, run.history)
    write_metrics(run.run_dir, run.history)


def _finished(run: _Run) -> TrainResult:
    """A finished run: give back what it left, redoing only what a crash after the last checkpoint may have left unwritten."""
    config = run.config
    resumed_from = run.start_epoch - 1
    if run.distiller is not None:
        run.distiller.detach_hooks()
    _write_history(run)
    if config.plot and not (run.run_dir / PLOT_NAME).exists():
        plot_history(run.history, run.run_dir / PLOT_NAME, config.plot_title)
    evaluation = None
    eval_path = run.run_dir / EVALUATION_NAME
    if run.test_store is not None:
        evaluation = Evaluation.load(eval_path) if eval_path.exists() else None
        if evaluation is None:
            evaluation = _evaluate(run.model, run.test_store, config, run.device, None)
            evaluation.save(eval_path)
    return TrainResult(run.history, evaluation, run.run_dir, resumed_from, resumed_from)


def _evaluate(model: torch.nn.Module, test_store: ImageStore, config: TrainConfig, device: torch.device, bar: Any) -> Evaluation:
    return evaluate(
        model,
        test_store,
        label_range=config.label_range,
        batch_size=config.eval_batch_size or config.batch_size,
        device=device,
        progress=bar,
        tf32=config.tf32,
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
        panels.append(("distill", "distillation term (CQD: cross-entropy to the teacher), before its weight"))
    panels.append(("top1err", "top-1 error"))
    width, height = 5.0 * len(panels), (4.4 if title else 4.0)
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # Fixed margins, in inches, a little wider than what `tight_layout` finds for these panels (ticks of up to 5
    # characters): measuring every text again took half the time of a run's figure, 79 of them per demo.
    left, right, bottom, top, gap = 0.55, 0.15, 0.6, (0.65 if title else 0.35), 0.65
    panel = (width - left - right - gap * (len(panels) - 1)) / len(panels)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height, wspace=gap / panel)
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
    return fig


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Write `history_figure(history, title)` to `path` (the run's `net-train.pdf`), atomically."""
    fig = history_figure(history, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="pdf")
