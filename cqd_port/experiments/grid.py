"""The experiment grid: which runs a table needs, in which order, and running them.

`plan_grid` turns (table, tasks, methods) into cells and the runs they need,
shared where two cells ask for the same computation (the CUB A model serves
five columns); the runs form a DAG (an A model before the runs that start from
it or distil from it) listed in an order that respects it. `run_grid`
executes the plan resumably on this node through `cqd_port.experiments.launch`
(a finished run is reused when its identity matches, an unfinished one
continues from its checkpoint; independent runs go in parallel, one per slot),
then assembles results from the run folders (`cqd_port.experiments.collect`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cqd_port.data import PREPARED_DEFAULT
from cqd_port.errors import CqdError
from cqd_port.experiments.methods import A_CQD_STARTS, A_MODEL, AUGMENTATION_CLASSES, IMAGENET, METHODS, RunSpec, read_run_json
from cqd_port.experiments.paper import paper_table
from cqd_port.experiments.tasks import VGG_VD16, DataVariant, Task, select_tasks, table_tasks, with_epochs, with_lambda

if TYPE_CHECKING:
    import torch

    from cqd_port.data.degrade import DegradationConfig
    from cqd_port.experiments.launch import SlurmOptions
    from cqd_port.experiments.networks import NetworkSpec


@dataclass(frozen=True)
class DatasetSource:
    """A dataset of `cqd-port train`: its root and reader (`folder`: ImageFolder with the split options; `cub`; `cars`)."""

    root: Path
    format: str = "folder"
    test_fraction: float = 0.3
    split_seed: int = 0

    def read(self, name: str):
        """The `DatasetIndex` (named `name`)."""
        if self.format == "folder":
            from cqd_port.data.imagefolder import read_image_folder

            return read_image_folder(self.root, name=name, test_fraction=self.test_fraction, seed=self.split_seed)
        from cqd_port.data.prepare import read_dataset

        index = read_dataset(self.format, self.root)
        index.name = name
        return index


@dataclass(frozen=True)
class CellPlan:
    """A cell of the table and the run whose test accuracy fills it."""

    task: str
    method: str
    run: str


@dataclass
class GridPlan:
    """Cells to fill and the runs they need (dependencies first)."""

    table: int
    cells: list[CellPlan]
    runs: dict[str, RunSpec] = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # plan_grid's keyword arguments: the whole table is planned with the same ones
    a_cqd_start: str = A_MODEL  # "a_model" (the paper) or "imagenet" (the release)

    def variants(self) -> list[DataVariant]:
        """Every prepared data variant some run reads, in first-use order."""
        seen: dict[DataVariant, None] = {}
        for run in self.runs.values():
            for variant in (*run.train, run.test):
                seen.setdefault(variant, None)
        return list(seen)

    def archs(self) -> list[str]:
        """Every network that starts from ImageNet weights somewhere in the plan."""
        seen: dict[str, None] = {}
        for run in self.runs.values():
            if run.trains and run.init == IMAGENET:
                seen.setdefault(run.arch, None)
        return list(seen)


def _task_runs(task: Task, method: str, a_key: str, class_factor: int, a_cqd_start: str = A_MODEL) -> RunSpec:
    """The run answering (task, method), its A-model dependency given as `a_key`."""
    spec = METHODS[method]
    if method == "a_cqd" and a_cqd_start == IMAGENET:
        spec = replace(spec, start=IMAGENET)
    teacher_arch, student_arch = task.teacher_arch, task.student_arch
    key = f"{task.name}/{method}"
    if method == "upper_bound":
        return RunSpec(key, method, task.name, teacher_arch, (task.a,), task.a, IMAGENET, task.hyper, task.batch_size(teacher_arch))
    if method == "no_adaptation":
        return RunSpec(key, method, task.name, teacher_arch, (), task.b, a_key, task.hyper, task.batch_size(teacher_arch), depends=(a_key,))
    init = a_key if spec.start == "a_model" else IMAGENET
    if init == a_key and teacher_arch != student_arch:
        raise CqdError(f"{task.name}/{method}: cannot start a {student_arch} from the {teacher_arch} A model")
    train = (task.a, task.b) if spec.train == "A+B" else (task.b,)
    depends = (a_key,) if (spec.distill or init == a_key) else ()
    return RunSpec(
        key,
        method,
        task.name,
        student_arch,
        train,
        task.b,
        init,
        task.hyper,
        task.batch_size(student_arch),
        class_factor=class_factor if spec.train == "A+B" else 1,
        teacher=a_key if spec.distill else None,
        teacher_arch=teacher_arch if spec.distill else None,
        teacher_data=task.a if spec.distill else None,
        depends=depends,
    )


def plan_grid(
    table: int,
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
    epochs: int | None = None,
    augmentation_classes: str = "2k",
    a_cqd_start: str = A_MODEL,
    vd_vd_lambda: float | None = None,
) -> GridPlan:
    """Cells of Table `table` for the chosen tasks and methods, and the runs they need.

    `a_cqd_start="imagenet"` starts A-CQD from ImageNet as the release did
    (then the same run as CQD); `vd_vd_lambda` overrides lambda of the
    vgg-vd -> vgg-vd task (default 200, the release's; the paper says 50).

    A run is shared between cells that ask for the same computation; its folder
    is named after the first task that needs it in the paper's order (tasks
    with f = g first), whatever subset is selected, so a partial grid and the
    full one put the same run in the same folder.
    """
    paper = paper_table(table)
    if augmentation_classes not in AUGMENTATION_CLASSES:
        raise CqdError(f"--augmentation-classes {augmentation_classes}: use 2k (the released code) or k")
    chosen_methods = list(methods) if methods else list(paper.methods)
    unknown = [m for m in chosen_methods if m not in paper.methods]
    if unknown:
        raise CqdError(f"--methods: unknown method(s) {', '.join(unknown)} for Table {table} (choose from {', '.join(paper.methods)})")
    chosen_tasks = {t.name for t in select_tasks(table, tasks)}
    class_factor = 2 if augmentation_classes == "2k" else 1
    if a_cqd_start not in A_CQD_STARTS:
        raise CqdError(f"--a-cqd-start {a_cqd_start}: use a_model (the paper's text) or imagenet (the released script)")

    def settings(task: Task) -> Task:
        both_vd = task.teacher_arch == task.student_arch == VGG_VD16
        return with_lambda(with_epochs(task, epochs), vd_vd_lambda if both_vd else None)

    all_tasks = [settings(t) for t in table_tasks(table)]
    preference = sorted(all_tasks, key=lambda t: t.teacher_arch != t.student_arch)  # stable: f = g owners first
    by_signature: dict[tuple, str] = {}
    runs: dict[str, RunSpec] = {}
    cell_run: dict[tuple[str, str], str] = {}
    for task in preference:
        a_key = None
        for method in ("upper_bound", *[m for m in paper.methods if m != "upper_bound"]):
            run = _task_runs(task, method, a_key or "", class_factor, a_cqd_start)
            signature = run.signature()
            key = by_signature.setdefault(signature, run.key)
            if key == run.key:
                runs[key] = run
            if method == "upper_bound":
                a_key = key
            cell_run[(task.name, method)] = key

    cells = [
        CellPlan(t.name, m, cell_run[(t.name, m)])
        for m in paper.methods
        if m in chosen_methods
        for t in all_tasks
        if t.name in chosen_tasks
    ]
    needed: set[str] = set()
    stack = [c.run for c in cells]
    while stack:
        key = stack.pop()
        if key not in needed:
            needed.add(key)
            stack.extend(runs[key].depends)
    ordered = {k: r for k, r in runs.items() if k in needed}  # registration order puts dependencies first
    options = {"epochs": epochs, "augmentation_classes": augmentation_classes, "a_cqd_start": a_cqd_start, "vd_vd_lambda": vd_vd_lambda}
    return GridPlan(table, cells, ordered, options, a_cqd_start)


# --------------------------------------------------------------------------- configuration


@dataclass
class GridConfig:
    """Where data, models and runs live, and how runs execute.

    `pretrained` maps a network ("vgg-m", "vgg-vd-16") to the model file that
    stands in for the ImageNet model (the demo's pretrained stand-in); when
    absent the file is looked up in `models`. `lr_scale` multiplies the
    released schedule (the demo's short runs); the input size and average
    image come from the model's meta (`average_image` "stored": subtracted as
    stored, as the release; "colour": its mean colour); `domain_a` "native"
    reads domain A and the full images at native resolution, resized on the fly
    in single precision, as the release ("prepared": their 224 JPEGs); every run reads its
    images from tensor stores (`cqd_port.data.store`); a missing data variant is prepared from `cub_root` /
    `cars_root` by `workers` processes (None: one per usable CPU; with
    `prepare_config` as extra `DegradationConfig` fields).
    `lowres_kernel` makes the low-resolution variants with "bilinear" (the
    user's specification, default) or "bicubic" (the release; its own
    prepared folders, `lowres-bicubic`).
    """

    out: Path
    prepared: Path = PREPARED_DEFAULT
    models: Path = Path("models")
    cub_root: Path | None = None
    cars_root: Path | None = None
    sed_model: Path | None = None
    device: str = "auto"
    gpus: tuple[int, ...] = ()  # launcher slots: one job at a time per entry (a GPU listed twice runs two)
    tf32: bool = False
    workers: int | None = None  # processes preparing a missing variant (None: one per usable CPU)
    seed: int = 0
    lrn_mode: str = "exact"
    pretrained: dict[str, Path] = field(default_factory=dict)
    lr_scale: float = 1.0
    progress: bool = True
    synthetic: bool = False
    edges_method: str | None = None  # what `edges` variants are made with; None: `edges`, the paper's SED (needs sed_model)
    prepare_config: dict | None = None  # extra DegradationConfig fields
    batch_size: int | None = None  # overrides the paper's batch size (the demo's small data)
    average_image: str = "stored"  # "colour": the mean colour of averageImage (cqd-port's old behaviour)
    domain_a: str = "native"  # "prepared": domain A from its prepared 224 JPEGs (cqd-port's old behaviour)
    lowres_kernel: str = "bilinear"  # low-res variants: "bilinear" (the user's specification) or "bicubic" (the release)
    # `cqd-port train` (one run on the user's data; cqd_port.experiments.custom):
    networks: dict[str, NetworkSpec] = field(default_factory=dict)  # RunSpec.arch -> the network; else the ImageNet VGG of `models`
    datasets: dict[str, DatasetSource] = field(default_factory=dict)  # dataset name -> where and how to read it
    plugin_params: dict[str, dict] = field(default_factory=dict)  # `module:function` degradation -> its keyword arguments
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "matconvnet"  # or "torch" (torch.optim.SGD)

    def __post_init__(self) -> None:
        from cqd_port.data.degrade import LOWRES_KERNELS

        if self.lowres_kernel not in LOWRES_KERNELS:
            raise CqdError(f"--lowres-kernel {self.lowres_kernel}: use bilinear (the specification) or bicubic (the release)")

    def degradation_config(self, variant: DataVariant) -> DegradationConfig:
        """The `DegradationConfig` a variant is prepared with: `prepare_config`, the SED model, the low-res kernel
        (low-res variants only: other variants' settings stay the defaults), a plugin's parameters."""
        from cqd_port.data.degrade import LOWRES_DEGRADATIONS, DegradationConfig, is_plugin

        concrete = self.concrete(variant)
        extra = dict(self.prepare_config or {})
        if self.sed_model is not None:
            extra.setdefault("sed_model", str(self.sed_model))
        if concrete.degradation in LOWRES_DEGRADATIONS:
            extra["lowres_kernel"] = self.lowres_kernel
        if is_plugin(concrete.degradation):
            extra["plugin_params"] = dict(self.plugin_params.get(concrete.degradation) or {})
        return DegradationConfig(**extra)

    def initial_network(self, arch: str, num_classes: int) -> tuple[torch.nn.Module, dict]:
        """The network a run starting from 'imagenet' begins with, and its SGD multipliers.

        `networks[arch]` when the run names one (`cqd-port train`); otherwise the
        ImageNet model of `arch` (`model_file`) set up as the released code did.
        """
        from cqd_port.experiments.networks import NetworkSpec, initial_network

        spec = self.networks.get(arch) or NetworkSpec(arch, str(self.model_file(arch)))
        return initial_network(spec, num_classes, seed=self.seed, lrn_mode=self.lrn_mode)

    def concrete(self, variant: DataVariant) -> DataVariant:
        """The variant actually prepared.

        `edges` becomes `edges_method` when one is set (the demo's Sobel edges);
        a low-resolution variant carries a non-default `lowres_kernel`.
        """
        from cqd_port.data.degrade import DEFAULT_LOWRES_KERNEL, LOWRES_DEGRADATIONS

        if variant.degradation == "edges" and self.edges_method and self.edges_method != "edges":
            return DataVariant(variant.dataset, self.edges_method, variant.source)
        if variant.degradation in LOWRES_DEGRADATIONS and self.lowres_kernel != DEFAULT_LOWRES_KERNEL:
            return replace(variant, lowres_kernel=self.lowres_kernel)
        return variant

    def variant_dir(self, variant: DataVariant) -> Path:
        """The prepared copy of a data variant: `<prepared>/<dataset>/<folder>` (`cqd_port.data.prepare.output_dir`)."""
        from cqd_port.data.prepare import output_dir

        concrete = self.concrete(variant)
        return output_dir(
            self.prepared, concrete.dataset, concrete.degradation, concrete.source, concrete.lowres_kernel,
            self.plugin_params.get(concrete.degradation),
        )

    def dataset_root(self, dataset: str) -> Path | None:
        if dataset in self.datasets:
            return self.datasets[dataset].root
        return self.cub_root if dataset == "cub" else self.cars_root

    def model_file(self, arch: str) -> Path:
        """The ImageNet (or stand-in) model for `arch`; CqdError naming the file and convert-weights when missing."""
        from cqd_port.experiments.networks import imagenet_model_path

        if arch in self.networks:
            weights = self.networks[arch].weights
            return Path(weights) if weights is not None else Path("random-init")
        if arch in self.pretrained:
            path = Path(self.pretrained[arch])
            if not path.is_file():
                raise CqdError(f"pretrained model for {arch} missing: {path}")
            return path
        return imagenet_model_path(self.models, arch)


def run_dir(config: GridConfig, key: str) -> Path:
    return Path(config.out) / key


def run_status(config: GridConfig, key: str) -> str:
    """'finished', 'running' (started, not finished: resumes from its checkpoint) or 'pending'."""
    return str(read_run_json(run_dir(config, key)).get("status", "pending"))


def status_text(config: GridConfig, key: str) -> str:
    """The dry run's word for a run: finished, pending, running (a live lock) or interrupted with the epoch it resumes at."""
    from cqd_port.experiments.execute import LOCK, RunLock
    from cqd_port.train.trainer import HISTORY_NAME

    status = run_status(config, key)
    if status != "running":
        return status
    folder = run_dir(config, key)
    lock = RunLock(folder / LOCK)
    holder = lock._holder()
    if holder and not lock._stale(holder):
        return f"running on {holder.get('host')} pid {holder.get('pid')}"
    try:
        epochs = len(json.loads((folder / HISTORY_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        epochs = 0
    return f"interrupted, resumes at epoch {epochs + 1}"


def describe_plan(plan: GridPlan, config: GridConfig) -> list[str]:
    """What `reproduce --dry-run` prints: every cell, its run, the runs, data variants and models.

    Reads only; nothing is created.
    """
    from cqd_port.experiments.networks import imagenet_model_candidates

    lines = [f"Table {plan.table}: {len(plan.cells)} cells, {len(plan.runs)} runs, output {config.out}", "", "cells (task / method -> run):"]
    for cell in plan.cells:
        shared = "" if cell.run == f"{cell.task}/{cell.method}" else "  (shared run)"
        lines.append(f"  {cell.task} / {cell.method} -> {cell.run}{shared}")
    lines += ["", "runs (in dependency order):"]
    for key, run in plan.runs.items():
        after = f"  [after {', '.join(run.depends)}]" if run.depends else ""
        lines.append(f"  {key} [{status_text(config, key)}]: {run.describe()}{after}")
    lines += ["", "data variants:"]
    for variant in plan.variants():
        path = config.variant_dir(variant)
        state = "exists" if (path / "manifest.json").is_file() else "missing, will be prepared"
        root = config.dataset_root(variant.dataset)
        if state != "exists" and root is None:
            state = f"missing; needs --{variant.dataset}-root to prepare it"
        if state != "exists" and config.concrete(variant).degradation == "edges" and config.sed_model is None:
            state += " and --sed-model (the paper's Structured Edge Detector)"
        lines.append(f"  {config.concrete(variant).label}: {path} ({state})")
    lines += ["", "pretrained models:"]
    for arch in plan.archs():
        if arch in config.pretrained:
            path = Path(config.pretrained[arch])
            lines.append(f"  {arch}: {path} ({'exists' if path.is_file() else 'missing'})")
            continue
        candidates = imagenet_model_candidates(config.models, arch)
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            lines.append(f"  {arch}: {found} (exists)")
        else:
            lines.append(f"  {arch}: {candidates[0]} (missing; run `cqd-port convert-weights {candidates[1]}`)")
    return lines


# --------------------------------------------------------------------------- execution


def _no_raw_data(folder: Path, concrete: DataVariant, config: GridConfig) -> CqdError:
    """The error for a prepared variant that is missing and cannot be prepared (no raw dataset given)."""
    return CqdError(f"prepared data {folder} missing; pass --{concrete.dataset}-root DIR (the raw dataset) so it can be prepared, or run {prepare_command(concrete, config)}")


def prepare_command(concrete: DataVariant, config: GridConfig) -> str:
    """The `cqd-port prepare` line that writes `concrete` where `config` reads it, with DIR for the raw dataset folder."""
    source = f" --source {concrete.source}" if concrete.source else ""
    kernel = f" --lowres-kernel {concrete.lowres_kernel}" if concrete.lowres_kernel else ""
    sed = f" --sed-model {config.sed_model or 'MODEL.yml.gz'}" if concrete.degradation == "edges" else ""
    return (
        f"`cqd-port prepare --dataset {concrete.dataset} --degradation {concrete.degradation}{source}{kernel}{sed} "
        f"--data-root DIR --out {config.prepared}` (DIR: the raw dataset folder)"
    )


def ensure_variant(variant: DataVariant, config: GridConfig, progress: bool = True) -> Path:
    """The prepared folder of `variant`, preparing it from the raw dataset when it is missing or stale.

    Preparation resumes where an interrupted one stopped (`prepare_dataset`);
    with the raw dataset given, a folder whose sources changed since is
    rebuilt (its fingerprint), one that is current is returned at once.
    CqdError naming the folder and the option when the raw dataset is not given.
    """
    from cqd_port.data.prepare import MANIFEST, prepare_dataset

    folder = config.variant_dir(variant)
    concrete = config.concrete(variant)
    root = config.dataset_root(variant.dataset)
    if root is None:
        if (folder / MANIFEST).is_file():
            return folder
        raise _no_raw_data(folder, concrete, config)
    source = config.datasets.get(variant.dataset)
    return prepare_dataset(
        concrete.dataset,
        concrete.degradation,
        root,
        config.prepared,
        source=concrete.source,
        workers=config.workers,  # None: prepare's own default, what the machine has
        config=config.degradation_config(variant),
        progress=progress,
        index=source.read(concrete.dataset) if source is not None else None,
    )


@dataclass
class GridOutcome:
    """What `run_grid` leaves: the results files, their Markdown, the run.json of each run it executed."""

    results_json: Path
    results_md: Path
    markdown: str
    runs: dict[str, dict]


def check_inputs(plan: GridPlan, config: GridConfig) -> None:
    """Fail before any work when an unfinished run needs a missing model or unpreparable data."""
    pending = [r for k, r in plan.runs.items() if run_status(config, k) != "finished"]
    for arch in dict.fromkeys(r.arch for r in pending if r.trains and r.init == IMAGENET):
        config.model_file(arch)
    from cqd_port.data.prepare import MANIFEST

    for variant in dict.fromkeys(v for r in pending for v in (*r.train, r.test, *( (r.teacher_data,) if r.teacher_data else ()))):
        folder = config.variant_dir(variant)
        concrete = config.concrete(variant)
        if not (folder / MANIFEST).is_file() and concrete.degradation == "edges" and config.sed_model is None:
            raise CqdError(
                f"prepared data {folder} missing and the paper's edges need the Structured Edge model: pass --sed-model "
                "modelBsds.mat (the SED toolbox's forest), or prepare the folder with `cqd-port prepare`"
            )
        if not (folder / MANIFEST).is_file() and config.dataset_root(variant.dataset) is None:
            raise _no_raw_data(folder, concrete, config)


def progress_line(done: int, total: int, key: str, record: dict) -> str:
    """`[12/44] res_cub/cqd: 54.7% (1 m 02 s)`: the line printed when a run finishes."""
    seconds = float(record.get("seconds") or 0.0)
    accuracy = record.get("accuracy")
    shown = f"{accuracy:.1f}%" if accuracy is not None else "done"
    return f"[{done}/{total}] {key}: {shown} ({int(seconds // 60)} m {int(seconds % 60):02d} s)"


def run_grid(
    plan: GridPlan,
    config: GridConfig,
    on_run: Callable[[str, dict], None] | None = None,
    *,
    seeds: tuple[int, ...] = (0,),
    select: dict[str, tuple[float, ...]] | None = None,
    rerun: bool = False,
) -> GridOutcome:
    """Execute every job of `plan` not done on this node (`cqd_port.experiments.launch.launch_local`), then collect.

    `config.gpus` are the slots (none or one: in this process, one run after
    the other). `on_run(key, record)` is called after each run (the demo's
    progress). results.json/md are then assembled from the run folders of the
    whole table (`cqd_port.experiments.collect`).
    """
    from cqd_port.experiments.collect import collect_results, write_grid_json
    from cqd_port.experiments.launch import absolute, check_identities, launch_local
    from cqd_port.experiments.plan import schedule_grid

    check_inputs(plan, config)
    schedule = schedule_grid(plan, config, seeds, select)
    check_identities(schedule, config, rerun)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    write_grid_json(config.out, plan.table, plan.options, seeds, select, absolute(config))
    keys = [n.key for n in schedule.runs()]

    def on_done(node, record: dict) -> None:
        if node.kind != "run":
            return
        if on_run is not None:
            on_run(node.key, record)
        elif config.progress:
            done = sum(1 for k in keys if run_status(config, k) == "finished")
            print(progress_line(done, len(keys), node.key, record), flush=True)

    say = print if config.progress else (lambda _message: None)
    records = launch_local(schedule, config, config.gpus, rerun, on_done=on_done, say=say)
    json_path, md_path = collect_results(plan.table, plan.options, seeds, select, config)
    return GridOutcome(json_path, md_path, md_path.read_text(encoding="utf-8"), records)


def submit_grid(
    plan: GridPlan,
    config: GridConfig,
    slurm: SlurmOptions,
    *,
    seeds: tuple[int, ...] = (0,),
    select: dict[str, tuple[float, ...]] | None = None,
    rerun: bool = False,
    wait: bool = False,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, dict], GridOutcome]:
    """Submit the jobs of `plan` to SLURM (`cqd_port.experiments.launch.submit_slurm`), optionally follow them, collect.

    Returns the jobs (as written to `<out>/slurm-jobs.json`) and the results
    collected so far (cells of unfinished runs pending).
    """
    from cqd_port.experiments.collect import collect_results, write_grid_json
    from cqd_port.experiments.launch import absolute, check_identities, submit_slurm, wait_for_jobs
    from cqd_port.experiments.plan import schedule_grid

    check_inputs(plan, config)
    schedule = schedule_grid(plan, config, seeds, select)
    check_identities(schedule, config, rerun)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    write_grid_json(config.out, plan.table, plan.options, seeds, select, absolute(config))
    jobs = submit_slurm(schedule, config, slurm, rerun, say=say)
    if wait and jobs:
        wait_for_jobs(schedule, config, jobs, progress=config.progress)
    json_path, md_path = collect_results(plan.table, plan.options, seeds, select, config)
    return jobs, GridOutcome(json_path, md_path, md_path.read_text(encoding="utf-8"), {})
