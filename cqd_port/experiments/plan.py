"""Planning: tables x methods x seeds x selection candidates -> jobs, and resolving a job's identity.

* `plan_grid` turns (table, tasks, methods) into cells and the runs they need
  (`RunSpec`s), shared where two cells ask for the same computation (the CUB A
  model serves five columns); its folder is named after the first task that
  needs it in the paper's order. `task_run` is the run answering one (task,
  method); `cqd-port train` plans with it too.
* `schedule_grid` expands one seed's runs into a DAG of *nodes*, each one job
  of a launcher: one `prepare` node per data variant (the data stage: every
  run that reads a variant depends on it); one `run` node per (seed, run)
  (seed 0 in `<out>/<key>`, seed s > 0 in `<out>/seed<s>/<key>` with its own A
  model); with a selection grid (`--select lambda=20,50,200 T=10`) one
  validation run per candidate of each distilling run, in
  `<out>/select/[seed<s>/]<key>/<name>`, which the distilling run depends on.
* `resolve_job` turns a run node into its `RunJob` (`cqd_port.experiments.job`):
  the settings as numbers, the digests of its data and start model, the
  identities of the runs it starts from or distils from, and lambda/T chosen
  from its finished candidates. Parts not known yet (data not prepared, a
  candidate not finished) are `PENDING`: such a job is never reused.
* `Workspace` is where runs live and how they execute (no numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cqd_port.data.catalog import MISSING, DataCatalog, file_digest
from cqd_port.errors import CqdError
from cqd_port.experiments.job import PENDING, RunJob, identity_hash
from cqd_port.experiments.methods import (
    A_CQD_STARTS,
    A_MODEL,
    AUGMENTATION_CLASSES,
    DISTILLERS,
    IMAGENET,
    METHODS,
    RunSpec,
    default_distill_spec,
    with_weight,
)
from cqd_port.experiments.networks import NetworkSpec
from cqd_port.experiments.paper import paper_table
from cqd_port.experiments.runfolder import FINISHED, RunFolder, is_failed, read_run_json
from cqd_port.experiments.settings import CHECKPOINT_INTERVAL, GridConfig
from cqd_port.experiments.tasks import VGG_VD16, DataVariant, Task, select_tasks, table_tasks, with_epochs, with_lambda

SELECT_KEYS = {"lambda": "lambda_", "T": "temperature", **{m: "weight" for m in DISTILLERS}}
"""`--select` names: CQD's lambda and T; a distiller's name for its weight candidates (`--select fitnets=0.01,0.1`)."""
COMPARED_WITH = ("fine_tuning", "cqd")
"""The rows a distiller is compared with, paired by seed: `--methods fitnets` runs them too."""


# --------------------------------------------------------------------------- tables -> runs


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


def task_run(task: Task, method: str, a_key: str, class_factor: int, a_cqd_start: str = A_MODEL) -> RunSpec:
    """The run answering (task, method), its A-model dependency given as `a_key`."""
    spec = METHODS[method]
    if method == "a_cqd" and a_cqd_start == IMAGENET:
        spec = replace(spec, start=IMAGENET)
    teacher_arch, student_arch = task.teacher_arch, task.student_arch
    key = f"{task.name}/{method}"
    if method in DISTILLERS:  # CQD's run with the distiller's term, its layers named for f's and g's networks
        run = replace(task_run(task, "cqd", a_key, class_factor), key=key, method=method)
        return replace(run, distiller=default_distill_spec(method, teacher_arch, student_arch))
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
    distillers: tuple[str, ...] = (),
) -> GridPlan:
    """Cells of Table `table` for the chosen tasks and methods, and the runs they need.

    `a_cqd_start="imagenet"` starts A-CQD from ImageNet as the release did
    (then the same run as CQD); `vd_vd_lambda` overrides lambda of the
    vgg-vd -> vgg-vd task (default 200, the release's; the paper says 50).
    Distillers (`DISTILLERS`) named in `methods` or `distillers` add rows
    after the paper's, with the rows they are compared with (`COMPARED_WITH`).

    A run is shared between cells that ask for the same computation; its folder
    is named after the first task that needs it in the paper's order (tasks
    with f = g first), whatever subset is selected, so a partial grid and the
    full one put the same run in the same folder.
    """
    paper = paper_table(table)
    if augmentation_classes not in AUGMENTATION_CLASSES:
        raise CqdError(f"--augmentation-classes {augmentation_classes}: use 2k (the released code) or k")
    extra = tuple(dict.fromkeys((*distillers, *(m for m in methods or () if m in DISTILLERS))))
    chosen_methods = [m for m in methods or () if m not in DISTILLERS] or ([] if methods else list(paper.methods))
    unknown = [m for m in (*chosen_methods, *extra) if m not in paper.methods and m not in DISTILLERS]
    if unknown:
        known = ", ".join((*paper.methods, *DISTILLERS))
        raise CqdError(f"--methods: unknown method(s) {', '.join(unknown)} for Table {table} (choose from {known})")
    if extra:
        chosen_methods += [m for m in COMPARED_WITH if m not in chosen_methods]
    chosen_methods += extra
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
        for method in ("upper_bound", *[m for m in paper.methods if m != "upper_bound"], *extra):
            run = task_run(task, method, a_key or "", class_factor, a_cqd_start)
            signature = run.signature()
            key = by_signature.setdefault(signature, run.key)
            if key == run.key:
                runs[key] = run
            if method == "upper_bound":
                a_key = key
            cell_run[(task.name, method)] = key

    cells = [
        CellPlan(t.name, m, cell_run[(t.name, m)])
        for m in (*paper.methods, *extra)
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
    if extra:  # only then: grid.json of the paper's table as before
        options["distillers"] = list(extra)
    return GridPlan(table, cells, ordered, options, a_cqd_start)


# --------------------------------------------------------------------------- the DAG of jobs


@dataclass(frozen=True)
class Node:
    """One job: prepare a data variant (`prepare`) or execute a run (`run`, under `seed`)."""

    key: str  # unique; for a run, its folder under <out>
    kind: str  # "prepare" or "run"
    depends: tuple[str, ...] = ()
    run: RunSpec | None = None
    seed: int = 0
    variant: DataVariant | None = None


@dataclass
class Schedule:
    """The DAG of a table's jobs (dependencies first) and which node fills each (seed, cell)."""

    plan: GridPlan
    seeds: tuple[int, ...]
    nodes: dict[str, Node] = field(default_factory=dict)
    cells: dict[tuple[int, str, str], str] = field(default_factory=dict)  # (seed, task, method) -> run node key

    def runs(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "run"]

    def prepares(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "prepare"]


def parse_seeds(text: str | None) -> tuple[int, ...]:
    """`0,1,2` -> (0, 1, 2); CqdError for anything else."""
    if not text:
        return (0,)
    try:
        seeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CqdError(f"--seeds {text}: expected seeds separated by commas, e.g. --seeds 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CqdError(f"--seeds {text}: seeds must be distinct non-negative integers, e.g. --seeds 0,1,2")
    return seeds


def parse_select(items: list[str] | None) -> dict[str, tuple[float, ...]]:
    """`["lambda=20,50,200", "T=10"]` -> {"lambda": (20, 50, 200), "T": (10,)}; {} when not given."""
    grid: dict[str, tuple[float, ...]] = {}
    for item in items or []:
        for part in item.split():
            name, _, values = part.partition("=")
            if name not in SELECT_KEYS or not values:
                raise CqdError(
                    f"--select {part}: expected lambda=V1,V2,..., T=V1,V2,... or a distiller's weights "
                    f"({'=..., '.join(DISTILLERS)}=...), e.g. --select lambda=20,50,200"
                )
            try:
                numbers = tuple(float(v) for v in values.split(",") if v.strip())
            except ValueError:
                raise CqdError(f"--select {part}: values must be numbers, e.g. lambda=20,50,200") from None
            if not numbers or any(v <= 0 for v in numbers):
                raise CqdError(f"--select {part}: values must be positive numbers")
            grid[name] = tuple(dict.fromkeys(numbers))
    return grid


def _seeded(key: str, seed: int) -> str:
    return key if seed == 0 else f"seed{seed}/{key}"


def _candidate_name(lambda_: float, temperature: float) -> str:
    return f"lambda{lambda_:g}_T{temperature:g}"


def run_variants(run: RunSpec) -> tuple[DataVariant, ...]:
    """Every data variant a run reads (training, test, the teacher's)."""
    return tuple(dict.fromkeys((*run.train, run.test, *((run.teacher_data,) if run.teacher_data else ()))))


def schedule_grid(plan: GridPlan, catalog: DataCatalog, seeds: tuple[int, ...] = (0,), select: dict[str, tuple[float, ...]] | None = None) -> Schedule:
    """The jobs of `plan` under every seed, with validation runs for `select` and a data stage first."""
    schedule = Schedule(plan, tuple(seeds))
    prepare_keys: dict[DataVariant, str] = {}
    for variant in plan.variants():
        concrete = catalog.concrete(variant)
        key = f"prepare/{concrete.dataset}/{concrete.folder}"
        prepare_keys[variant] = key
        schedule.nodes[key] = Node(key, "prepare", variant=variant)

    def data_deps(run: RunSpec) -> tuple[str, ...]:
        return tuple(dict.fromkeys(prepare_keys[v] for v in run_variants(run)))

    for seed in schedule.seeds:
        rename = {key: _seeded(key, seed) for key in plan.runs}
        for key, run in plan.runs.items():
            seeded = replace(
                run,
                key=rename[key],
                init=rename.get(run.init, run.init),
                teacher=rename.get(run.teacher) if run.teacher else None,
                depends=tuple(rename[d] for d in run.depends),
            )
            if select and seeded.distill and seeded.distiller is not None:
                candidates = []
                for weight in select.get(run.method, DISTILLERS[run.method].candidates):
                    name = f"select/{seeded.key}/weight{weight:g}"
                    candidate = replace(seeded, key=name, distiller=with_weight(seeded.distiller, weight), validation=seed)
                    schedule.nodes[name] = Node(name, "run", (*data_deps(run), *candidate.depends), candidate, seed)
                    candidates.append(name)
                seeded = replace(seeded, select_from=tuple(candidates), depends=(*seeded.depends, *candidates))
            elif select and seeded.distill:
                candidates = []
                lambdas = select.get("lambda", (run.hyper.lambda_,))
                temperatures = select.get("T", (run.hyper.temperature,))
                for lambda_ in lambdas:
                    for temperature in temperatures:
                        name = f"select/{seeded.key}/{_candidate_name(lambda_, temperature)}"
                        candidate = replace(seeded, key=name, hyper=replace(run.hyper, lambda_=lambda_, temperature=temperature), validation=seed)
                        schedule.nodes[name] = Node(name, "run", (*data_deps(run), *candidate.depends), candidate, seed)
                        candidates.append(name)
                seeded = replace(seeded, select_from=tuple(candidates), depends=(*seeded.depends, *candidates))
            schedule.nodes[seeded.key] = Node(seeded.key, "run", (*data_deps(run), *seeded.depends), seeded, seed)
        for cell in plan.cells:
            schedule.cells[(seed, cell.task, cell.method)] = rename[cell.run]
    return schedule


# --------------------------------------------------------------------------- where runs live


@dataclass(frozen=True)
class Workspace:
    """Where runs live and how they execute: nothing here changes a number (that is `RunJob`'s)."""

    out: Path
    catalog: DataCatalog
    device: str = "auto"
    progress: bool = True
    synthetic: bool = False
    domain_a: str = "native"
    networks: dict[str, NetworkSpec] = field(default_factory=dict)  # arch -> the network a run from 'imagenet' begins with
    # False: test images scored after the last epoch only (the final accuracy and the weights are the same;
    # history.json then has a test row for the last epoch alone). The demo's short runs: see GridConfig.
    evaluate_every_epoch: bool = True
    checkpoint_interval: float = CHECKPOINT_INTERVAL  # seconds between a run's checkpoints (0: every epoch)

    def folder(self, key: str) -> RunFolder:
        return RunFolder(Path(self.out) / key, key)


def workspace(config: GridConfig, archs: list[str] = ()) -> Workspace:
    """The `Workspace` of `config`, with the start networks of `archs` (CqdError when a model file is missing)."""
    return Workspace(
        Path(config.out), config.catalog(), str(config.device), config.progress, config.synthetic, config.domain_a,
        {arch: config.network(arch) for arch in archs}, config.evaluate_every_epoch, config.checkpoint_interval,
    )


def start_archs(schedule: Schedule, out: Path) -> list[str]:
    """The networks that unfinished runs start from ImageNet with (their model files must exist)."""
    pending = [n.run for n in schedule.runs() if RunFolder(Path(out) / n.key).status() != FINISHED]
    return list(dict.fromkeys(r.arch for r in pending if r.trains and r.init == IMAGENET))


# --------------------------------------------------------------------------- resolving a job


def candidate_setting(objective: dict[str, Any]) -> dict[str, Any]:
    """A validation run's `lambda` and `T` from its run.json objective (a distiller: its weight as lambda, T only
    for a method that has one)."""
    if objective.get("kind") == "distill":
        return {"lambda": objective.get("weight"), "T": objective.get("temperature")}
    return {"lambda": objective.get("lambda"), "T": objective.get("temperature")}


def choose_candidate(out: Path, candidates: tuple[str, ...]) -> dict[str, Any] | None:
    """The selection of a run chosen on validation: each candidate's lambda, T and validation accuracy, and the best.

    The best is the highest validation accuracy among the finished candidates
    (a tie goes to the one listed first); a candidate that failed or diverged
    is listed with its status and not chosen. None while a candidate has not
    ended; CqdError when none finished.
    """
    rows = []
    for key in candidates:
        record = read_run_json(Path(out) / key)
        status = str(record.get("status", "pending"))
        if status != FINISHED and not is_failed(status):
            return None
        objective = record.get("objective") or {}
        row = {"run": key, **candidate_setting(objective), "val_accuracy": record.get("accuracy")}
        if status != FINISHED:
            row["status"] = status
        rows.append(row)
    finished = [i for i, r in enumerate(rows) if "status" not in r]
    if not finished:
        raise CqdError(f"every validation run of {candidates[0].rsplit('/', 1)[0]} failed or diverged ({rows[0]['status']}); see their run.json")
    best = max(finished, key=lambda i: (rows[i]["val_accuracy"], -i))
    return {"candidates": rows, "chosen": {"lambda": rows[best]["lambda"], "T": rows[best]["T"]}}


class JobResolver:
    """Resolves the run nodes of a schedule into `RunJob`s under one configuration (memoised per node)."""

    def __init__(self, schedule: Schedule, config: GridConfig, catalog: DataCatalog | None = None) -> None:
        self.schedule = schedule
        self.config = config
        self.catalog = catalog or config.catalog()
        self.out = Path(config.out)
        self._jobs: dict[str, RunJob] = {}
        self._splits: dict[str, str | None] = {}
        self._digests: dict[DataVariant, str] = {}

    def data_digest(self, variant: DataVariant) -> str:
        if variant not in self._digests:
            digest = self.catalog.manifest_digest(variant)
            self._digests[variant] = PENDING if digest == MISSING else digest
        return self._digests[variant]

    def forget_data(self) -> None:
        """Data was (re)prepared: digests and jobs are read again."""
        self._digests.clear()
        self._jobs.clear()

    def _split(self, dataset: str) -> str | None:
        if dataset not in self._splits:
            self._splits[dataset] = self.catalog.split_digest(dataset)
        return self._splits[dataset]

    def _run_reference(self, key: str) -> str:
        job = self.job(self.schedule.nodes[key])
        return f"run {identity_hash(job)}" if job.complete else PENDING

    def _start(self, run: RunSpec) -> str:
        if run.init != IMAGENET:
            return self._run_reference(run.init)
        network = self.config.network(run.arch)
        if network.weights is None:
            return f"random init {run.arch}"
        return f"imagenet {run.arch} sha256 {file_digest(Path(network.weights))[:16]}"

    def selection(self, node: Node) -> dict[str, Any] | None:
        run = node.run
        assert run is not None
        return choose_candidate(self.out, run.select_from) if run.select_from else None

    def job(self, node: Node) -> RunJob:
        """The `RunJob` of a run node (see the module docstring)."""
        if node.key in self._jobs:
            return self._jobs[node.key]
        from cqd_port.train.schedules import get_schedule, shorten_schedule

        run = node.run
        assert run is not None and node.kind == "run"
        config, catalog = self.config, self.catalog
        hyper = run.hyper
        lambda_, temperature = (hyper.lambda_, hyper.temperature) if run.distill else (None, None)
        spec = run.distiller
        if spec is not None:
            lambda_, temperature = spec.weight, spec.temperature if "temperature" in spec.info.params else None
        selection: tuple[str, ...] = ()
        if run.select_from:
            selection = tuple(self._run_reference(k) for k in run.select_from)
            chosen = None
            if PENDING not in selection:
                try:
                    chosen = self.selection(node)
                except CqdError:
                    chosen = None
            if chosen is None:
                lambda_ = temperature = None
                selection = (*selection, PENDING)
            elif spec is not None:  # the weight is chosen; T is the method's own
                lambda_ = float(chosen["chosen"]["lambda"])
            else:
                lambda_, temperature = float(chosen["chosen"]["lambda"]), float(chosen["chosen"]["T"])
        released = get_schedule(hyper.schedule) if isinstance(hyper.schedule, str) else tuple(hyper.schedule)
        datasets = dict.fromkeys(v.dataset for v in run_variants(run))
        splits = [s for s in (self._split(d) for d in datasets) if s is not None]
        job = RunJob(
            method=run.method,
            task=run.task,
            arch=run.arch,
            start=self._start(run),
            train=tuple(catalog.concrete(v).label for v in run.train),
            test=catalog.concrete(run.test).label,
            data=tuple((catalog.concrete(v).label, self.data_digest(v)) for v in run_variants(run)),
            split=",".join(splits) if splits else None,
            teacher=self._run_reference(run.teacher) if run.teacher else None,
            teacher_data=catalog.concrete(run.teacher_data).label if run.teacher_data else None,
            seed=node.seed,
            validation=run.validation,
            epochs=hyper.epochs,
            schedule=tuple(shorten_schedule(released, hyper.epochs, config.lr_scale)) if run.trains else (),
            batch_size=config.batch_size or run.batch_size,
            class_factor=run.class_factor,
            lambda_=lambda_,
            temperature=temperature,
            selection=selection,
            optimizer=config.optimizer,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            lrn_mode=config.lrn_mode,
            average_image=config.average_image,
            domain_a=config.domain_a,
            tf32=config.tf32,
            distill=tuple((k, v) for k, v in spec.to_dict().items() if k != "weight") if spec is not None else None,
        )
        self._jobs[node.key] = job
        return job


def check_inputs(schedule: Schedule, config: GridConfig) -> None:
    """Before any work: every unfinished run's start model exists, every missing variant can be prepared,
    every plugin degradation passes its contract on a real image of its dataset (`DataCatalog`)."""
    out = Path(config.out)
    for arch in start_archs(schedule, out):
        config.model_file(arch)
    pending = [n.run for n in schedule.runs() if RunFolder(out / n.key).status() != FINISHED]
    variants = [v for run in pending for v in run_variants(run)]
    catalog = config.catalog()
    catalog.check_preparable(variants)
    catalog.check_plugins(variants)


def jsonable(value: Any) -> Any:
    """Settings as JSON data (dataclasses as dicts, paths as strings) for grid.json."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):  # e.g. a NetworkSpec of GridConfig.networks
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def schedule_runs(plan: GridPlan, catalog: DataCatalog, seed: int) -> Schedule:
    """The jobs of one set of runs under one seed, each in its own folder `<out>/<key>` (`cqd-port train`)."""
    schedule = schedule_grid(plan, catalog, (0,))
    schedule.seeds = (seed,)
    schedule.nodes = {k: replace(n, seed=seed) if n.kind == "run" else n for k, n in schedule.nodes.items()}
    return schedule
