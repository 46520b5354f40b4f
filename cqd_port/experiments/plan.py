"""From a table's plan to the jobs that compute it: seeds, validation selection, data stages, run identity.

`cqd_port.experiments.grid.plan_grid` lists the runs one seed of a table
needs. `schedule_grid` expands that into a DAG of *nodes*, each one job of a
launcher (`cqd_port.experiments.launch`):

* one `prepare` node per data variant (the first stage: every run that reads a
  variant depends on its node, so no two jobs prepare the same folder);
* one `run` node per (seed, run); seed 0 keeps the run's folder `<out>/<key>`,
  seed s > 0 lives in `<out>/seed<s>/<key>` with its own A model (seeds are
  paired across methods, as the paired difference of `collect` needs);
* with a selection grid (`--select lambda=20,50,200 T=10`), one validation run
  per candidate of each distilling run, in `<out>/select/[seed<s>/]<key>/<name>`
  (trained on a seeded, stratified validation split of the training set,
  sharing the A model), and the distilling run itself then depends on its
  candidates and takes the best one's lambda and T when it starts.

A run's *identity* is every setting that changes its result: the `RunSpec`
fields (network, data variants, epochs, schedule, lambda, T, batch size, A+B
classes, ...), the result-changing fields of `GridConfig` (taken from the
dataclass, so a field added there is part of the identity unless listed in
`NOT_IDENTITY`), the seed, the start model's file and the identities of the
runs it starts from or distils from. `identity_hash` is its SHA-256; the
data variants' manifests are added when the run executes
(`cqd_port.experiments.execute`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cqd_port.errors import CqdError
from cqd_port.experiments.methods import IMAGENET, RunSpec
from cqd_port.experiments.tasks import DataVariant

if TYPE_CHECKING:
    from cqd_port.experiments.grid import GridConfig, GridPlan

# GridConfig fields that say where things are or how they execute, not what is computed.
# (Data folders and model files enter the identity through their contents instead.)
NOT_IDENTITY = frozenset(
    {"out", "prepared", "models", "cub_root", "cars_root", "sed_model", "device", "gpus", "workers", "progress", "synthetic", "pretrained", "seed"}
)
SELECT_KEYS = {"lambda": "lambda_", "T": "temperature"}


@dataclass(frozen=True)
class Node:
    """One job: prepare a data variant (`variant`) or execute a run (`run`, under `seed`)."""

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
                raise CqdError(f"--select {part}: expected lambda=V1,V2,... and/or T=V1,V2,... (e.g. --select lambda=20,50,200)")
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


def schedule_grid(plan: GridPlan, config: GridConfig, seeds: tuple[int, ...] = (0,), select: dict[str, tuple[float, ...]] | None = None) -> Schedule:
    """The jobs of `plan` under every seed, with validation runs for `select` and a data stage first."""
    schedule = Schedule(plan, tuple(seeds))
    prepare_keys: dict[DataVariant, str] = {}
    for variant in plan.variants():
        concrete = config.concrete(variant)
        key = f"prepare/{concrete.dataset}/{concrete.folder}"
        prepare_keys[variant] = key
        schedule.nodes[key] = Node(key, "prepare", variant=variant)

    def data_deps(run: RunSpec) -> tuple[str, ...]:
        variants = (*run.train, run.test, *((run.teacher_data,) if run.teacher_data else ()))
        return tuple(dict.fromkeys(prepare_keys[v] for v in variants))

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
            if select and seeded.distill:
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


# --------------------------------------------------------------------------- identity


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):  # e.g. a NetworkSpec of GridConfig.networks
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_identity(config: GridConfig) -> dict[str, Any]:
    """The result-changing fields of `config` (every dataclass field not in `NOT_IDENTITY`)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in fields(config) if f.name not in NOT_IDENTITY}


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def run_identity(node: Node, schedule: Schedule, config: GridConfig, _memo: dict[str, dict] | None = None) -> dict[str, Any]:
    """The settings that make `node`'s run what it is (flat dict; see the module docstring).

    Dependencies appear by their own identity hash, so a changed A model
    changes every run that starts from it or distils from it.
    """
    memo = {} if _memo is None else _memo
    if node.key in memo:
        return memo[node.key]
    run = node.run
    assert run is not None
    spec = {k: _jsonable(v) for k, v in asdict(run).items() if k not in ("key", "depends", "init", "teacher", "select_from", "batch_size")}
    hyper = spec.pop("hyper")
    identity: dict[str, Any] = {f"run.{k}": v for k, v in spec.items()}
    identity.update({f"run.hyper.{k}": v for k, v in hyper.items()})
    identity["run.batch_size"] = config.batch_size or run.batch_size
    identity.update({f"config.{k}": v for k, v in config_identity(config).items()})
    identity["seed"] = node.seed
    if run.trains and run.init == IMAGENET:
        identity["start"] = f"{run.arch} model sha256 {file_digest(config.model_file(run.arch))[:16]}"
    for role, key in (("start", run.init if run.init != IMAGENET else None), ("teacher", run.teacher)):
        if key:
            identity[role] = "run " + identity_hash(run_identity(schedule.nodes[key], schedule, config, memo))
    if run.select_from:
        identity["select"] = [identity_hash(run_identity(schedule.nodes[k], schedule, config, memo)) for k in run.select_from]
        identity.pop("run.hyper.lambda_", None)  # lambda and T come from the selection
        identity.pop("run.hyper.temperature", None)
    memo[node.key] = identity
    return identity


def differing(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the settings that differ between two identities (a setting missing on one side differs)."""
    return [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
