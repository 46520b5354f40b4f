"""Executing one run job: evaluate-only, build its data, train and record.

`execute_run(node, job, space, data)` is the one road every command takes to
a run (`reproduce` on either launcher, `cqd-port train`, the demo):

1. the runs it starts from or distils from must have finished; one that
   failed or diverged stops it with a one-line error naming that run (for CQD:
   the teacher f) and the setting to change;
2. `RunFolder.claim` (`cqd_port.experiments.runfolder`): the lock and the one
   identity guard (`RunJob`); a finished run of the same identity is returned
   as it is;
3. `evaluate_only` (no adaptation: the A model on B's test images), or
   `build_data` (the stores, paired with the teacher's logits for CQD) then
   `train_and_record`;
4. the run.json state: `finished` only when training ended with finite,
   sane objectives; `diverged at epoch N` (NaN/inf, or a per-image
   objective above `DIVERGED_OBJECTIVE`), `failed: <one line>` on any error,
   `stopped: disk full` on a full disk (it resumes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cqd_port.data.catalog import DataCatalog, DataVariant, DomainData
from cqd_port.errors import CqdError, DiskFullError
from cqd_port.experiments.job import RunJob, identity
from cqd_port.experiments.methods import IMAGENET, RunSpec
from cqd_port.experiments.networks import model_input
from cqd_port.experiments.plan import Node, Workspace
from cqd_port.experiments.runfolder import DIVERGED_PREFIX, FINISHED, RunFolder, diverged_epoch, is_failed

FINAL_MODEL = "final.pt"
TEACHER_CACHE = "teacher-logits"
TARGETS_CACHE = "teacher-targets"  # f's feature targets for a later distiller (`cqd_port.train.teacher.teacher_targets`)

DIVERGED_OBJECTIVE = 1e4
"""A per-image softmax-log objective above this means logit gaps of 1e4: the weights have blown up (a run at
chance scores log(k), a few units); such a run is recorded `diverged`, never `finished`."""


def divergence(history: list[dict[str, Any]]) -> tuple[int, str] | None:
    """(epoch, what) of the first epoch whose train or test objective is not finite or above `DIVERGED_OBJECTIVE`."""
    for entry in history:
        for split in ("train", "test"):
            value = (entry.get(split) or {}).get("objective")
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value) or abs(value) > DIVERGED_OBJECTIVE:
                return int(entry.get("epoch", 0)), f"{split} objective {value:g} at epoch {entry.get('epoch')}"
    return None


def blocked_by(run: RunSpec, space: Workspace) -> str | None:
    """Why `run` cannot start: the run it starts from or distils from failed or diverged (None when it may start)."""
    for role, key in (("teacher f", run.teacher), ("start model", run.init if run.init != IMAGENET else None)):
        if not key:
            continue
        status = space.folder(key).status()
        if status == FINISHED:
            continue
        if is_failed(status):
            setting = (
                "lower its learning rate (`cqd-port train`: train.lr_scale, e.g. 0.1, or train.schedule)"
                if status.startswith(DIVERGED_PREFIX)
                else "fix what its run.json names"
            )
            return f"{run.key} not started: its {role} ({key}) ended '{status}'; {setting}, then rerun the same command"
        return f"{run.key} not started: its {role} ({key}) has not finished ({status}); rerun the same command"
    return None


def _load_trained(folder: Path, lrn_mode: str) -> torch.nn.Module:
    from cqd_port.experiments.networks import load_trained_model

    path = Path(folder) / FINAL_MODEL
    if not path.is_file():
        raise CqdError(f"{path} missing: the run {folder.name} has not finished; rerun the same command to train it first")
    return load_trained_model(path, lrn_mode=lrn_mode)


def model_data_input(model: torch.nn.Module, data: DomainData, variant: DataVariant, average: str) -> tuple[tuple[int, int], np.ndarray]:
    """What the data path feeds `model` for `variant` (`cqd_port.experiments.networks.model_input`)."""
    from cqd_port.data.prepare import prepared_out_size

    return model_input(model, prepared_out_size(data.index(variant).root), average)


def _validation_part(index: Any, seed: int, part: str) -> list:
    """The training records of `index` split for validation (`cqd_port.data.splits.validation_split`): 'train' or 'val'."""
    from cqd_port.data.splits import validation_split

    split = validation_split(index, seed=seed)
    return split.train if part == "train" else split.val


def _synthetic_data(run: RunSpec, catalog: DataCatalog) -> bool:
    """Whether the run reads generated data (its prepared folders carry synthetic.json), whichever command runs it."""
    from cqd_port.data.synth import is_synthetic

    roots = [catalog.dataset_root(v.dataset) for v in (*run.train, run.test)]
    return any(is_synthetic(catalog.variant_dir(v)) for v in (*run.train, run.test)) or any(r is not None and is_synthetic(r) for r in roots)


# --------------------------------------------------------------------------- the steps


def evaluate_only(model: torch.nn.Module, data: DomainData, variant: DataVariant, records: list, job: RunJob, device: str,
                  label_range: tuple[int, int] | None = None, batch_size: int | None = None):
    """A trained model on `records` of `variant`, as the data path feeds it (no adaptation; `cqd-port evaluate`)."""
    from cqd_port.train.device import select_device
    from cqd_port.train.evaluate import evaluate

    size, average = model_data_input(model, data, variant, job.average_image)
    dev = select_device(device)
    store = data.dataset(variant, records, size, average)
    return evaluate(model.to(dev), store, label_range=label_range, batch_size=batch_size or job.batch_size, device=dev, tf32=job.tf32)


@dataclass
class RunData:
    """What `build_data` gives the trainer: the stores and, for CQD, the teacher's logits (a later distiller: f's targets)."""

    train_set: Any
    test_set: Any
    logits: torch.Tensor | None
    targets: Any = None  # `TeacherTargets` of f's layers for a later distiller


def build_data(run: RunSpec, job: RunJob, model: torch.nn.Module, data: DomainData, space: Workspace) -> RunData:
    """B (or A, or A+B) training images, the test images, and for CQD A's images through the teacher, paired with B's."""
    from cqd_port.data.batches import paired_records
    from cqd_port.data.store import ImageStore
    from cqd_port.train.device import select_device
    from cqd_port.train.teacher import TARGET_CACHE_BUDGET, teacher_logits, teacher_targets

    size, average = model_data_input(model, data, run.test, job.average_image)
    test_index = data.index(run.test)
    test_records = test_index.test_records() if run.validation is None else _validation_part(test_index, run.validation, "val")
    test_set = data.dataset(run.test, test_records, size, average)
    if not run.distill:
        parts = []
        for variant in run.train:
            index = data.index(variant)
            records = index.train_records() if run.validation is None else _validation_part(index, run.validation, "train")
            parts.append(data.dataset(variant, records, size, average))
        return RunData(parts[0] if len(parts) == 1 else ImageStore.concat(parts), test_set, None)
    a_variant = run.teacher_data
    assert a_variant is not None and run.teacher is not None
    a_records, b_records = paired_records(data.index(a_variant), data.index(run.train[0]), train=True)
    if run.validation is not None:
        kept = {r.path for r in _validation_part(data.index(run.train[0]), run.validation, "train")}
        pairs = [(a, b) for a, b in zip(a_records, b_records) if b.path in kept]
        a_records, b_records = [a for a, _ in pairs], [b for _, b in pairs]
    train_set = data.dataset(run.train[0], b_records, size, average)
    teacher = _load_trained(space.out / run.teacher, job.lrn_mode)
    t_size, t_average = model_data_input(teacher, data, a_variant, job.average_image)
    teacher_set = data.dataset(a_variant, a_records, t_size, t_average)
    dev = select_device(space.device)
    if run.distiller is not None:  # f is frozen: its targets are cached when they fit the budget, else recomputed
        targets = teacher_targets(
            teacher.to(dev), teacher_set, run.distiller.teacher_layers, space.out / run.teacher / TARGETS_CACHE,
            budget=TARGET_CACHE_BUDGET, batch_size=max(job.batch_size, 32), device=dev, tf32=job.tf32,
        )
        return RunData(train_set, test_set, None, targets)
    logits = teacher_logits(
        teacher.to(dev), teacher_set, space.out / run.teacher / TEACHER_CACHE, batch_size=max(job.batch_size, 32), device=dev, tf32=job.tf32
    )
    return RunData(train_set, test_set, logits)


def _start_network(run: RunSpec, job: RunJob, space: Workspace, num_classes: int) -> tuple[torch.nn.Module, Any, int]:
    """The network a run begins with, its SGD multipliers and the number of classes it is scored on."""
    from cqd_port.experiments.networks import initial_network, model_num_classes, trained_start

    if run.init == IMAGENET:
        spec = space.networks.get(run.arch)
        if spec is None:
            raise CqdError(f"no start network for {run.arch}; give its model file (--models, or the config's weights)")
        model, multipliers = initial_network(spec, num_classes * run.class_factor, seed=job.seed, lrn_mode=job.lrn_mode)
        return model, multipliers, num_classes
    model, multipliers = trained_start(space.out / run.init / FINAL_MODEL, job.lrn_mode)
    return model, multipliers, model_num_classes(model)


def epoch_line(key: str, epoch: int, epochs: int, record: dict[str, Any]) -> str:
    """One line per finished epoch when progress bars are off (`--no-progress`): the user sees the run work."""
    text = f"{key}: epoch {epoch}/{epochs} done, train err {record['train']['top1err']:.3f}"
    return text + (f", test acc {record['test']['accuracy']:.1f}%" if "test" in record else "")


def train_and_record(run: RunSpec, job: RunJob, space: Workspace, data: DomainData, folder: RunFolder, record: dict[str, Any]) -> dict[str, Any]:
    """Train (resuming from the folder's checkpoint), save final.pt, record finished or diverged."""
    from cqd_port.experiments.networks import save_trained_model
    from cqd_port.train.objective import Objective
    from cqd_port.train.trainer import TrainConfig, TrainingDiverged, train

    started = time.perf_counter()
    k = data.index(run.test).num_classes
    model, multipliers, num_classes = _start_network(run, job, space, k)
    inputs = build_data(run, job, model, data, space)
    train_config = TrainConfig(
        epochs=job.epochs,
        batch_size=job.batch_size,
        schedule=job.schedule,
        momentum=job.momentum,
        weight_decay=job.weight_decay,
        optimizer=job.optimizer,
        momentum_reset_each_epoch=job.optimizer == "matconvnet",  # torch.optim.SGD keeps its momentum, as in PyTorch
        seed=job.seed,
        device=space.device,
        label_range=(0, k) if run.class_factor != 1 else None,
        lrn_mode=job.lrn_mode,
        tf32=job.tf32,
        evaluate_every_epoch=space.evaluate_every_epoch,
        checkpoint_interval=space.checkpoint_interval,
        plot_title=f"{run.key}: task {run.task}, method {run.method}" + (" - SYNTHETIC DATA" if record["synthetic"] else ""),
    )
    if run.distiller is not None:
        objective = Objective.for_method(replace(run.distiller, weight=float(job.lambda_)))
        record["teacher_targets"] = inputs.targets.describe()
    else:
        objective = Objective("cqd", job.lambda_, job.temperature) if run.distill else Objective("softmaxlog")
    try:
        targets = {"teacher_targets": inputs.targets} if inputs.targets is not None else {}  # only a distiller's run has them
        result = train(model, inputs.train_set, inputs.test_set, train_config, objective, folder.path,
                       teacher_logits=inputs.logits, multipliers=multipliers, progress=space.progress,
                       on_epoch=None if space.progress else lambda epoch, rec: print(epoch_line(run.key, epoch, job.epochs, rec), flush=True),
                       on_resume=lambda epoch: print(f"{run.key}: resuming at epoch {epoch}", flush=True), **targets)
    except TrainingDiverged as exc:
        return folder.mark_diverged(diverged_epoch(str(exc)) or 0, str(exc))
    bad = divergence(result.history)
    if bad is not None:
        epoch, what = bad
        return folder.mark_diverged(epoch, f"{what}; lower the learning rate (e.g. scale the schedule by 0.1)")
    save_trained_model(folder.path / FINAL_MODEL, model)
    record.update(
        accuracy=result.accuracy,
        epochs=job.epochs,
        batch_size=job.batch_size,
        schedule=list(job.schedule),
        objective=objective.to_dict(),
        optimizer=train_config.optimizer,
        num_classes=num_classes,
        label_range=list(train_config.label_range) if train_config.label_range else None,
        train_images=len(inputs.train_set),
        test_images=len(inputs.test_set),
        images_per_second=result.images_per_second if result.steps else None,
        resumed_from_epoch=result.resumed_from,
        seconds=record.get("seconds", 0.0) + time.perf_counter() - started,
    )
    return folder.mark_finished(record)


# --------------------------------------------------------------------------- one job


def execute_run(
    node: Node,
    job: RunJob,
    space: Workspace,
    data: DomainData,
    rerun: bool = False,
    selection: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run `node`'s job to completion in its folder (see the module docstring); return its run.json record."""
    from cqd_port.experiments.notes import run_notes, uses_lowres
    from cqd_port.train.trainer import EVALUATION_NAME

    run = node.run
    assert run is not None
    blocked = blocked_by(run, space)
    if blocked:
        raise CqdError(blocked)
    if not job.complete:
        raise CqdError(f"{node.key}: its data, start model or selection is not ready yet (see --dry-run); rerun the same command")
    folder = space.folder(node.key)
    with folder.claim(identity(job), rerun, say) as reused:
        if reused is not None:
            return reused
        if run.select_from and run.distiller is not None:
            run = replace(run, distiller=replace(run.distiller, weight=float(job.lambda_)))
        elif run.select_from:
            run = replace(run, hyper=replace(run.hyper, lambda_=float(job.lambda_), temperature=float(job.temperature)))
        catalog = space.catalog
        started = time.perf_counter()
        record: dict[str, Any] = {
            "key": run.key,
            "task": run.task,
            "method": run.method,
            "arch": run.arch,
            "train": list(job.train),
            "test": job.test,
            "init": run.init,
            "teacher": run.teacher,
            "description": replace(run, batch_size=job.batch_size).describe(),
            "synthetic": bool(space.synthetic) or _synthetic_data(run, catalog),
            "seed": job.seed,
            "lowres_kernel": catalog.lowres_kernel if uses_lowres(run, catalog) else None,
            "notes": run_notes(run, catalog),  # where the run's settings are an interpretation
        }
        if selection is not None:
            record["selection"] = selection
        record = folder.mark_running(record)
        try:
            if not run.trains:
                model = _load_trained(space.out / run.init, job.lrn_mode)
                index = data.index(run.test)
                evaluation = evaluate_only(model, data, run.test, index.test_records(), job, space.device)
                evaluation.save(folder.path / EVALUATION_NAME)
                return folder.mark_finished({**record, "accuracy": evaluation.accuracy, "seconds": time.perf_counter() - started})
            return train_and_record(run, job, space, data, folder, record)
        except DiskFullError:
            try:
                folder.mark_disk_full()
            except OSError:
                pass  # the disk-full error itself already names the problem
            raise
        except CqdError as exc:
            folder.mark_failed(str(exc))
            raise
        except KeyboardInterrupt:  # Ctrl-C: resumable from the last checkpoint, said so in run.json
            folder.mark_interrupted()
            raise
        except Exception as exc:  # an unexpected error: recorded, then shown with its traceback
            folder.mark_failed(f"{type(exc).__name__}: {exc}")
            raise
