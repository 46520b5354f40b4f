"""The cross-quality tasks of Tables 1 and 2: their two domains and hyper-parameters.

A task pairs a high-quality domain A with a degraded domain B of the same
images (same split, same order), as in Section 4.1 of the paper. Each domain is
a *prepared variant* of a dataset (degraded copies on disk, made by
`cqd_port.data.prepare.prepare_dataset`). Hyper-parameters are those of the
paper's Section 4 and the released code: T = 10 everywhere; lambda = 200 on
CUB, 50 on CARS; 50 when a vgg-vd teacher is distilled into vgg-m (Section 4.2)
and 200 for vgg-vd -> vgg-vd (the release's `run_CQD.m` sets lambda from the
dataset; `with_lambda` gives the paper's 50); batch 128 (32 when the trained
network is vgg-vd); 30 epochs with the dataset's learning-rate schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cqd_port.data.catalog import DataVariant
from cqd_port.errors import CqdError

VGG_M = "vgg-m"
VGG_VD16 = "vgg-vd-16"
ARCHS = (VGG_M, VGG_VD16)


@dataclass(frozen=True)
class Hyper:
    """Training hyper-parameters of one task (paper Section 4, 'Optimization details')."""

    schedule: str  # "cub" or "cars": which released learning-rate schedule
    lambda_: float  # weight of the distillation term
    temperature: float = 10.0
    batch_size: int = 128
    epochs: int = 30


@dataclass(frozen=True)
class Task:
    """A column of Table 1 or a row of Table 2."""

    name: str
    table: int
    a: DataVariant
    b: DataVariant
    teacher_arch: str = VGG_M  # f: trained on A
    student_arch: str = VGG_M  # g: trained on B
    hyper: Hyper = field(default_factory=lambda: Hyper("cub", 200.0))

    @property
    def dataset(self) -> str:
        return self.a.dataset

    def batch_size(self, arch: str) -> int:
        """The paper's batch size for training `arch` (128, 32 for vgg-vd)."""
        return 32 if arch == VGG_VD16 else self.hyper.batch_size


CUB_A = DataVariant("cub", "localized")
CARS_A = DataVariant("cars", "original")
CUB_HYPER = Hyper(schedule="cub", lambda_=200.0)
CARS_HYPER = Hyper(schedule="cars", lambda_=50.0)
VD_TEACHER_HYPER = Hyper(schedule="cub", lambda_=50.0)  # vgg-vd -> vgg-m: the paper's Section 4.2
VD_VD_HYPER = Hyper(schedule="cub", lambda_=200.0)  # vgg-vd -> vgg-vd: the release's run_CQD.m (CUB: 200)

TABLE1_TASKS: tuple[Task, ...] = (
    Task("local_cub", 1, CUB_A, DataVariant("cub", "original"), hyper=CUB_HYPER),
    Task("res_cub", 1, CUB_A, DataVariant("cub", "lowres"), hyper=CUB_HYPER),
    Task("res_cars", 1, CARS_A, DataVariant("cars", "lowres"), hyper=CARS_HYPER),
    Task("edge_cub", 1, CUB_A, DataVariant("cub", "edges"), hyper=CUB_HYPER),
    Task("edge_cars", 1, CARS_A, DataVariant("cars", "edges"), hyper=CARS_HYPER),
    Task("dist_cub", 1, CUB_A, DataVariant("cub", "distorted"), hyper=CUB_HYPER),
    Task("local_res_cub", 1, CUB_A, DataVariant("cub", "lowres", "full"), hyper=CUB_HYPER),
)

TABLE2_TASKS: tuple[Task, ...] = (
    Task("vggm_vggm", 2, CUB_A, DataVariant("cub", "original"), VGG_M, VGG_M, CUB_HYPER),
    Task("vgg16_vggm", 2, CUB_A, DataVariant("cub", "original"), VGG_VD16, VGG_M, VD_TEACHER_HYPER),
    Task("vgg16_vgg16", 2, CUB_A, DataVariant("cub", "original"), VGG_VD16, VGG_VD16, VD_VD_HYPER),
)


def table_tasks(table: int) -> tuple[Task, ...]:
    """The tasks (columns of Table 1, rows of Table 2) in the paper's order."""
    if table == 1:
        return TABLE1_TASKS
    if table == 2:
        return TABLE2_TASKS
    raise CqdError(f"--table {table}: the paper has Tables 1 and 2 only (use --table 1 or --table 2)")


def select_tasks(table: int, names: list[str] | None) -> tuple[Task, ...]:
    """The tasks named in `names` (all when None/empty), in the paper's order."""
    tasks = table_tasks(table)
    if not names:
        return tasks
    known = {t.name for t in tasks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CqdError(
            f"--tasks: unknown task(s) {', '.join(unknown)} for Table {table} (choose from {', '.join(t.name for t in tasks)})"
        )
    return tuple(t for t in tasks if t.name in set(names))


def with_lambda(task: Task, lambda_: float | None) -> Task:
    """The task with its distillation weight overridden (`--vd-vd-lambda 50`: the paper's value for vgg-vd)."""
    if lambda_ is None:
        return task
    if not lambda_ >= 0:
        raise CqdError(f"lambda {lambda_}: must be a non-negative number")
    return replace(task, hyper=replace(task.hyper, lambda_=float(lambda_)))


def with_epochs(task: Task, epochs: int | None) -> Task:
    """The task with its epoch count overridden (each run squeezes the released schedule into it, `shorten_schedule`)."""
    if epochs is None:
        return task
    if epochs < 1:
        raise CqdError(f"--epochs {epochs}: must be at least 1")
    return replace(task, hyper=replace(task.hyper, epochs=epochs))
