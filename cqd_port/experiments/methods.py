"""The methods of Tables 1 and 2 and what one run of them does.

A *cell* of a table (task x method) is answered by a *run*: one network
trained (or only evaluated) on given domains, from a given start, in its own
run folder. Several cells may share a run (the A model of CUB serves the
upper bound of five columns, the no-adaptation test, the staged and A-CQD
starts and the CQD teacher), which `cqd_port.experiments.grid` works out.

Methods (paper Section 4, 'Methods', and the released code):

| method | trains on | tests on | starts from | objective |
|---|---|---|---|---|
| upper_bound | A | A | ImageNet, new fc8 | softmax-log |
| no_adaptation | (the A model) | B | - | evaluation only |
| fine_tuning | B | B | ImageNet, new fc8 | softmax-log |
| data_augmentation | A+B | B | ImageNet, new fc8 (2k-way by default) | softmax-log |
| staged | B | B | the whole A model (fc8 and its multipliers included) | softmax-log |
| cqd | B | B | ImageNet, new fc8 | softmax-log + lambda * distillation from the A model |
| a_cqd | B | B | the whole A model | same as cqd |

`a_cqd_start="imagenet"` (`--a-cqd-start imagenet`) runs A-CQD as the released
script did: from ImageNet, which makes it CQD itself (the grid shares the run).

Data augmentation as released concatenates the class lists of the two
domains, so `fc8` is 2k-way while the labels of both domains stay in 1..k
(outputs k+1..2k are never a target); the test takes the argmax over the
label range 1..k. `augmentation_classes="k"` trains a plain k-way fc8.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from cqd_port.errors import CqdError, DiskFullError
from cqd_port.experiments.tasks import DataVariant, Hyper
from cqd_port.fileio import atomic_write_json

if TYPE_CHECKING:
    from cqd_port.data.records import DatasetIndex, ImageRecord
    from cqd_port.data.store import ImageStore
    from cqd_port.models.network import SimpleNetwork
    from cqd_port.experiments.grid import GridConfig

IMAGENET = "imagenet"


@dataclass(frozen=True)
class MethodSpec:
    """How a method trains: domains, start, objective (see the module table)."""

    name: str
    train: str  # "A", "B", "A+B" or "" (evaluation only)
    test: str  # "A" or "B"
    start: str  # "imagenet" or "a_model"
    distill: bool = False


METHODS: dict[str, MethodSpec] = {
    "upper_bound": MethodSpec("upper_bound", "A", "A", IMAGENET),
    "no_adaptation": MethodSpec("no_adaptation", "", "B", "a_model"),
    "fine_tuning": MethodSpec("fine_tuning", "B", "B", IMAGENET),
    "data_augmentation": MethodSpec("data_augmentation", "A+B", "B", IMAGENET),
    "staged": MethodSpec("staged", "B", "B", "a_model"),
    "cqd": MethodSpec("cqd", "B", "B", IMAGENET, distill=True),
    "a_cqd": MethodSpec("a_cqd", "B", "B", "a_model", distill=True),
}

AUGMENTATION_CLASSES = ("2k", "k")
A_MODEL = "a_model"
A_CQD_STARTS = (A_MODEL, IMAGENET)
"""Where A-CQD's student starts: the A model (the paper's text, the default) or ImageNet (the released
`run_CQD.m`, whose flags make A-CQD the same computation as CQD; the grid then shares CQD's run)."""


@dataclass(frozen=True)
class RunSpec:
    """One run: a network trained (or evaluated) in the run folder `<out>/<key>`.

    `init` is "imagenet" (the ImageNet model with a fresh fc8) or the key of the
    run whose `final.pt` it starts from; `teacher` the key of the run whose model
    gives the distillation targets; `depends` every run that must finish first.
    """

    key: str
    method: str
    task: str
    arch: str
    train: tuple[DataVariant, ...]
    test: DataVariant
    init: str
    hyper: Hyper
    batch_size: int
    class_factor: int = 1  # 2: the released A+B's 2k-way fc8
    teacher: str | None = None
    teacher_arch: str | None = None
    teacher_data: DataVariant | None = None  # the teacher's (A) domain, paired image by image with train[0]
    depends: tuple[str, ...] = ()
    validation: int | None = None  # a seed: train on that validation split's training part, test on its validation part
    select_from: tuple[str, ...] = ()  # candidate runs (validation runs); lambda and T are taken from the best of them

    @property
    def trains(self) -> bool:
        return bool(self.train)

    @property
    def distill(self) -> bool:
        return self.teacher is not None

    def signature(self) -> tuple:
        """What makes two runs the same computation (the folder name aside)."""
        return (
            self.method if self.method == "no_adaptation" else ("train", self.distill),
            self.arch,
            self.train,
            self.test,
            self.init,
            self.hyper.schedule,
            self.hyper.epochs,
            self.batch_size,
            self.class_factor,
            self.teacher,
            self.teacher_arch,
            self.teacher_data,
            (self.hyper.lambda_, self.hyper.temperature) if self.distill else None,
            self.validation,
            self.select_from,
        )

    def describe(self) -> str:
        """One line for `--dry-run`."""
        if not self.trains:
            what = f"evaluate {self.init} on {self.test.label}"
        else:
            train = " + ".join(v.label for v in self.train)
            if self.init != IMAGENET:
                start = f"{self.init}/final.pt"
            else:  # a `cqd-port train` network may start from random weights (its name says so)
                start = self.arch if "random init" in self.arch else "ImageNet " + self.arch
            what = f"train {self.arch} on {train} from {start}, test on {self.test.label}"
            if self.class_factor != 1:
                what += f", fc8 {self.class_factor}k-way"
            if self.distill and self.select_from:
                what += f", distill from {self.teacher} (lambda and T: the best of {len(self.select_from)} validation runs)"
            elif self.distill:
                what += f", distill from {self.teacher} (lambda {self.hyper.lambda_:g}, T {self.hyper.temperature:g})"
            if self.validation is not None:
                what = what.replace(", test on", ", on the validation split's training part, test on its validation part of")
            what += f", {self.hyper.epochs} epochs, batch {self.batch_size}"
        return what


# --------------------------------------------------------------------------- running one run

RUN_JSON = "run.json"
FINAL_MODEL = "final.pt"
TEACHER_CACHE = "teacher-logits"


AVERAGE_MODES = ("stored", "colour")


def input_normalization(
    meta: dict[str, Any], image_size: int | None = None, average: str = "stored"
) -> tuple[tuple[int, int], np.ndarray]:
    """Input side and average image the network expects, from its `meta.normalization`.

    As the released `imdb_get_batch`: images are resized to `imageSize(1:2)`
    and the model's `averageImage` is subtracted AS STORED (`average="stored"`):
    a 1x1x3 colour stays a colour, a full HxWx3 image (imagenet-vgg-m.mat's
    224x224x3) is subtracted pixel by pixel. `average="colour"` subtracts its
    mean colour `mean(mean(averageImage, 1), 2)` instead (what cqd-port did
    before; the B-CNN code's habit). A full image whose size is not the input
    size can only be used as its mean colour. `image_size` overrides the size
    (the demo's reduced networks carry their own in meta anyway).
    """
    if average not in AVERAGE_MODES:
        raise CqdError(f"unknown average mode '{average}'; use one of {', '.join(AVERAGE_MODES)}")
    norm = meta.get("normalization", {}) or {}
    size = norm.get("imageSize") or [224, 224]
    hw = (int(image_size), int(image_size)) if image_size else (int(size[0]), int(size[1]))
    avg = norm.get("averageImage")
    if avg is None:
        return hw, np.zeros((1, 1, 3), dtype=np.float32)
    avg = np.asarray(avg, dtype=np.float32)
    if avg.size == 3:
        return hw, avg.reshape(1, 1, 3)
    if average == "stored" and avg.ndim == 3 and avg.shape == (*hw, 3):
        return hw, avg.copy()
    return hw, avg.reshape(-1, 3).mean(axis=0).reshape(1, 1, 3).astype(np.float32)


NATIVE_DEGRADATIONS = ("original", "localized")
"""Variants the release read at native resolution and resized on the fly (domain A, the full CUB images)."""


class DomainData:
    """Prepared data variants as `ImageStore`s, cached for the life of a grid.

    `ensure(variant)` returns the prepared folder of a variant, preparing it
    when missing (see `cqd_port.experiments.grid.ensure_variant`). Each
    (variant, records, size) is decoded once into a store (memory-mapped in
    the variant's `store/` folder, keyed by its sources and settings, so later
    runs and other processes reuse it) and kept for every later run; a
    model's average image is attached per use, not stored.

    With `domain_a="native"` (the release's pipeline, issue 8 section 3) the
    `original` and `localized` variants (domain A, the full CUB images) are
    read from the dataset's own images at NATIVE resolution (cropped to the
    box for `localized` or a `box` source) and resized to the network's input
    in single precision, bicubic with antialiasing, unrounded, once, as float32;
    `domain_a="prepared"` reads their prepared 224 JPEGs (cqd-port's old
    behaviour). Degraded variants are always the prepared uint8 files, as the
    release's `save_images.m` wrote them.
    """

    STORE_FOLDER = "store"

    def __init__(
        self,
        ensure: Callable[[DataVariant], Path],
        progress: bool = False,
        domain_a: str = "native",
    ) -> None:
        if domain_a not in ("native", "prepared"):
            raise CqdError(f"unknown domain_a '{domain_a}'; use native or prepared")
        self._ensure = ensure
        self._progress = progress
        self._domain_a = domain_a
        self._indices: dict[DataVariant, DatasetIndex] = {}
        self._stores: dict[tuple, ImageStore] = {}

    def index(self, variant: DataVariant) -> DatasetIndex:
        """The variant's prepared index (read once)."""
        if variant not in self._indices:
            from cqd_port.data.prepare import read_prepared

            self._indices[variant] = read_prepared(self._ensure(variant))
        return self._indices[variant]

    def dataset(self, variant: DataVariant, records: list[ImageRecord], image_size: tuple[int, int], average: np.ndarray) -> ImageStore:
        """`records` of the variant as a store of network inputs with `average` subtracted per batch."""
        from cqd_port.data.store import build_store

        key = (variant, tuple(r.path for r in records), tuple(image_size))
        if key not in self._stores:
            index = self.index(variant)
            root, boxes, dtype = index.root, None, "auto"
            native = self._native_source(variant, index) if self._domain_a == "native" else None
            if native is not None:
                root, by_path, crop = native
                boxes = [by_path[r.path] for r in records] if crop else None
                dtype = "float32"
            self._stores[key] = build_store(
                root,
                [r.path for r in records],
                [r.label for r in records],
                image_size,
                boxes=boxes,
                dtype=dtype,
                cache_dir=Path(index.root) / self.STORE_FOLDER,
                progress=self._progress,
            )
        return self._stores[key].with_average(average)

    @staticmethod
    def _native_source(variant: DataVariant, index: DatasetIndex) -> tuple[Path, dict[str, Any], bool] | None:
        """(dataset root, boxes by path, crop?) for a native-resolution variant, from its prepared folder's settings."""
        from cqd_port.data.prepare import PARAMS_FILE, read_dataset

        if variant.degradation not in NATIVE_DEGRADATIONS or variant.dataset not in ("cub", "cars"):
            return None  # other datasets (`cqd-port train`'s own data): A is read from its prepared images
        params_path = Path(index.root) / PARAMS_FILE
        try:
            params = json.loads(params_path.read_text(encoding="utf-8"))
            data_root = Path(params["data_root"])
        except (OSError, ValueError, KeyError, TypeError):
            raise CqdError(f"{params_path} is missing or unreadable; delete {index.root} and rerun to prepare it again") from None
        raw = read_dataset(variant.dataset, data_root)
        by_path = {r.path: r.box for r in raw.records}
        missing = [r.path for r in index.records if r.path not in by_path]
        if missing:
            raise CqdError(f"{data_root} no longer has {missing[0]} (listed in {index.root}); point the grid at the dataset it was prepared from")
        crop = variant.degradation == "localized" or params.get("source") == "box"
        return data_root, by_path, crop


def _average_mode(config: Any) -> str:
    return str(getattr(config, "average_image", "stored"))


def read_run_json(folder: Path) -> dict[str, Any]:
    """A run folder's run.json, or {} when it is missing or unreadable (the run counts as not started)."""
    path = Path(folder) / RUN_JSON
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _synthetic_data(run: RunSpec, config: "GridConfig") -> bool:
    """Whether the run reads generated data (its prepared folders carry synthetic.json), whichever command runs it."""
    from cqd_port.data.synth import is_synthetic

    roots = [config.dataset_root(v.dataset) for v in (*run.train, run.test)]
    return any(is_synthetic(config.variant_dir(v)) for v in (*run.train, run.test)) or any(r is not None and is_synthetic(r) for r in roots)


def _validation_part(index: DatasetIndex, seed: int, part: str) -> list[ImageRecord]:
    """The training records of `index` split for validation (`cqd_port.data.splits.validation_split`): 'train' or 'val'."""
    from cqd_port.data.splits import validation_split

    split = validation_split(index, seed=seed)
    return split.train if part == "train" else split.val


def choose_candidate(out: Path, candidates: tuple[str, ...]) -> dict[str, Any]:
    """The selection record of a run chosen on validation: every candidate's lambda, T and validation accuracy, and the best.

    The best is the highest validation accuracy; a tie goes to the candidate listed first.
    """
    rows = []
    for key in candidates:
        record = read_run_json(out / key)
        if record.get("status") != "finished":
            raise CqdError(f"validation run {key} has not finished; rerun `cqd-port reproduce` to train it first")
        objective = record.get("objective") or {}
        rows.append({"run": key, "lambda": objective.get("lambda"), "T": objective.get("temperature"), "val_accuracy": record.get("accuracy")})
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_accuracy"], -i))
    return {"candidates": rows, "chosen": {"lambda": rows[best]["lambda"], "T": rows[best]["T"]}}


def _load_trained(folder: Path, lrn_mode: str) -> torch.nn.Module:
    from cqd_port.experiments.networks import load_trained_model

    path = Path(folder) / FINAL_MODEL
    if not path.is_file():
        raise CqdError(f"{path} missing: the run {folder.name} has not finished; rerun the same command to train it first")
    return load_trained_model(path, lrn_mode=lrn_mode)


def _input(model: torch.nn.Module, data: DomainData, variant: DataVariant, config: Any = None) -> tuple[tuple[int, int], np.ndarray]:
    """What the data path feeds `model` for `variant` (`cqd_port.experiments.networks.model_input`)."""
    from cqd_port.data.prepare import prepared_out_size
    from cqd_port.experiments.networks import model_input

    return model_input(model, prepared_out_size(data.index(variant).root), _average_mode(config))


DISK_FULL_STATUS = "stopped: disk full"


def _write_stopped(path: Path, status: str) -> None:
    """Mark run.json stopped. When even the small atomic write finds no space, rewrite it in place:
    the file already exists, so its blocks are there (the new text differs by a few bytes)."""
    record = read_run_json(path.parent)
    if not record:
        return
    record["status"] = status
    try:
        atomic_write_json(path, record)
    except CqdError:
        with open(path, "r+", encoding="utf-8") as handle:
            handle.write(json.dumps(record, indent=2) + "\n")
            handle.truncate()


def _records_disk_full(execute: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A run stopped by a full disk says so in its run.json ('stopped: disk full', not 'running'); it resumes."""
    import functools

    @functools.wraps(execute)
    def wrapper(run: RunSpec, config: "GridConfig", *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return execute(run, config, *args, **kwargs)
        except DiskFullError:
            try:
                _write_stopped(Path(config.out) / run.key / RUN_JSON, DISK_FULL_STATUS)
            except OSError:
                pass  # the disk-full error below already names the problem
            raise

    return wrapper


@_records_disk_full
def execute_run(run: RunSpec, config: "GridConfig", data: DomainData, device: str | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run `run` to completion in `<out>/<key>` (continuing from its checkpoint) and return its run.json.

    A finished run (run.json status 'finished') is returned as it is.
    """
    from cqd_port.data.batches import paired_records
    from cqd_port.experiments.networks import model_num_classes, save_trained_model, trained_start
    from cqd_port.experiments.notes import run_notes, uses_lowres
    from cqd_port.data.store import ImageStore
    from cqd_port.train.device import select_device
    from cqd_port.train.evaluate import evaluate
    from cqd_port.train.objective import Objective
    from cqd_port.train.schedules import get_schedule, shorten_schedule
    from cqd_port.train.teacher import teacher_logits
    from cqd_port.train.trainer import EVALUATION_NAME, TrainConfig, train

    out = Path(config.out)
    folder = out / run.key
    train_labels = [config.concrete(v).label for v in run.train]
    test_label = config.concrete(run.test).label
    record = read_run_json(folder)  # a folder holding other settings was refused by its identity (experiments.execute)
    if record.get("status") == "finished":
        return record
    selection = None
    if run.select_from:
        selection = choose_candidate(out, run.select_from)
        chosen = selection["chosen"]
        run = replace(run, hyper=replace(run.hyper, lambda_=float(chosen["lambda"]), temperature=float(chosen["T"])))
    device = device or config.device
    progress = config.progress if progress is None else progress
    batch_size = config.batch_size or run.batch_size
    started = time.perf_counter()
    record = {
        "key": run.key,
        "task": run.task,
        "method": run.method,
        "arch": run.arch,
        "status": "running",
        "train": train_labels,
        "test": test_label,
        "init": run.init,
        "teacher": run.teacher,
        "description": replace(run, batch_size=batch_size).describe(),
        "synthetic": bool(config.synthetic) or _synthetic_data(run, config),
        "seed": config.seed,
        "lowres_kernel": config.lowres_kernel if uses_lowres(run, config) else None,
        "notes": run_notes(run, config),  # where the run's settings are an interpretation
    }
    if selection is not None:
        record["selection"] = selection
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_JSON, record)

    if not run.trains:  # no adaptation: the A model on B's test images
        model = _load_trained(out / run.init, config.lrn_mode)
        size, average = _input(model, data, run.test, config)
        index = data.index(run.test)
        test_set = data.dataset(run.test, index.test_records(), size, average)
        dev = select_device(device)
        evaluation = evaluate(model.to(dev), test_set, batch_size=batch_size, device=dev, tf32=config.tf32)
        evaluation.save(folder / EVALUATION_NAME)
        record.update(status="finished", accuracy=evaluation.accuracy, seconds=time.perf_counter() - started)
        atomic_write_json(folder / RUN_JSON, record)
        return record

    # network
    test_index = data.index(run.test)
    k = test_index.num_classes
    if run.init == IMAGENET:
        model, multipliers = config.initial_network(run.arch, k * run.class_factor)
        num_classes = k
    else:
        model, multipliers = trained_start(out / run.init / FINAL_MODEL, config.lrn_mode)
        num_classes = model_num_classes(model)
    size, average = _input(model, data, run.test, config)

    # data: B (or A, or A+B) training images, paired with A's for the teacher
    test_records = test_index.test_records() if run.validation is None else _validation_part(test_index, run.validation, "val")
    test_set = data.dataset(run.test, test_records, size, average)
    logits = None
    if run.distill:
        a_variant = run.teacher_data
        a_records, b_records = paired_records(data.index(a_variant), data.index(run.train[0]), train=True)
        if run.validation is not None:
            kept = {r.path for r in _validation_part(data.index(run.train[0]), run.validation, "train")}
            pairs = [(a, b) for a, b in zip(a_records, b_records) if b.path in kept]
            a_records, b_records = [a for a, _ in pairs], [b for _, b in pairs]
        train_set = data.dataset(run.train[0], b_records, size, average)
        teacher = _load_trained(out / run.teacher, config.lrn_mode)
        t_size, t_average = _input(teacher, data, a_variant, config)
        teacher_set = data.dataset(a_variant, a_records, t_size, t_average)
        dev = select_device(device)
        logits = teacher_logits(
            teacher.to(dev), teacher_set, out / run.teacher / TEACHER_CACHE, batch_size=max(batch_size, 32), device=dev, tf32=config.tf32
        )
        del teacher
    else:
        parts = []
        for variant in run.train:
            index = data.index(variant)
            records = index.train_records() if run.validation is None else _validation_part(index, run.validation, "train")
            parts.append(data.dataset(variant, records, size, average))
        train_set = parts[0] if len(parts) == 1 else ImageStore.concat(parts)

    released = get_schedule(run.hyper.schedule) if isinstance(run.hyper.schedule, str) else tuple(run.hyper.schedule)
    schedule = shorten_schedule(released, run.hyper.epochs, config.lr_scale)
    train_config = TrainConfig(
        epochs=run.hyper.epochs,
        batch_size=batch_size,
        schedule=schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        optimizer=config.optimizer,
        momentum_reset_each_epoch=config.optimizer == "matconvnet",  # torch.optim.SGD keeps its momentum, as in PyTorch
        seed=config.seed,
        device=device,
        label_range=(0, k) if run.class_factor != 1 else None,
        lrn_mode=config.lrn_mode,
        tf32=config.tf32,
        plot_title=f"{run.key}: task {run.task}, method {run.method}" + (" - SYNTHETIC DATA" if record["synthetic"] else ""),
    )
    objective = (
        Objective("cqd", run.hyper.lambda_, run.hyper.temperature) if run.distill else Objective("softmaxlog")
    )
    result = train(model, train_set, test_set, train_config, objective, folder, teacher_logits=logits, multipliers=multipliers, progress=progress)
    save_trained_model(folder / FINAL_MODEL, model)
    record.update(
        status="finished",
        accuracy=result.accuracy,
        epochs=run.hyper.epochs,
        batch_size=batch_size,
        schedule=list(schedule),
        objective=objective.to_dict(),
        optimizer=train_config.optimizer,
        num_classes=num_classes,
        label_range=list(train_config.label_range) if train_config.label_range else None,
        train_images=len(train_set),
        test_images=len(test_set),
        images_per_second=result.images_per_second if result.steps else None,
        resumed_from_epoch=result.resumed_from,
        seconds=time.perf_counter() - started,
    )
    atomic_write_json(folder / RUN_JSON, record)
    return record
