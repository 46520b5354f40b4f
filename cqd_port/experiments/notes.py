"""Where a cell's setting is an interpretation, in words (results.json `notes`, results.md footnotes).

The paper, the released MATLAB code and the user's specification differ on a
few settings (README, "Where the release and the paper differ"). A cell says
which one its run followed whenever such a setting shaped it: the
low-resolution kernel, the edge detector, the distortion's random stream,
where A-CQD starts, lambda of the Table 2 distillations, the A+B classifier.
Every note is derived from the run itself (its data variants, start, lambda),
so it cannot disagree with what ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cqd_port.experiments.methods import IMAGENET, RunSpec
from cqd_port.experiments.tasks import VGG_M, VGG_VD16, DataVariant

if TYPE_CHECKING:
    from cqd_port.data.catalog import DataCatalog

LOWRES_BILINEAR = (
    "low resolution: 50 -> 224 bilinear, the user's specification "
    "(the release used imresize's defaults, bicubic: --lowres-kernel bicubic)"
)
LOWRES_BICUBIC = (
    "low resolution: bicubic, antialiased, uint8 after each pass, as the release's imresize "
    "(the user's specification is bilinear, the default)"
)
A_CQD_FROM_A = (
    "A-CQD: the student starts from the A model, as the paper's text says "
    "(the released script starts it from ImageNet, which makes it CQD: --a-cqd-start imagenet)"
)
A_CQD_FROM_IMAGENET = (
    "A-CQD as the released script ran it: from ImageNet, the same run as CQD "
    "(the paper's text starts the student from the A model: --a-cqd-start a_model)"
)
DISTORTION_SEED = (
    "distortion: the release's tpswarp exactly, its 4*randn offsets drawn from a per-image seed "
    "(MATLAB's global randn stream cannot be replayed)"
)
AUGMENTATION_2K = "A+B: fc8 2k-way with labels in 1..k, as the release (the paper is silent; --augmentation-classes k)"
AUGMENTATION_K = "A+B: a k-way fc8 (--augmentation-classes k; the release's fc8 is 2k-way)"


def _lambda_note(run: RunSpec) -> str | None:
    value = run.hyper.lambda_
    if run.teacher_arch == VGG_VD16 and run.arch == VGG_VD16:
        if value == 200.0:
            return (
                "lambda = 200 for vgg-vd -> vgg-vd, as the release's run_CQD.m sets it for CUB "
                "(the paper's Section 4.2 gives 50 for vgg-vd: --vd-vd-lambda 50)"
            )
        return f"lambda = {value:g} for vgg-vd -> vgg-vd (--vd-vd-lambda; the release's run_CQD.m: 200, the paper: 50)"
    if run.teacher_arch == VGG_VD16 and run.arch == VGG_M:
        return "lambda = 50 for vgg-vd -> vgg-m, the paper's Section 4.2 (the release's run_CQD.m sets 200 for any CUB run)"
    return None


def uses_lowres(run: RunSpec, catalog: DataCatalog) -> bool:
    """Whether the run trains or tests on a low-resolution variant (so `lowres_kernel` shaped it)."""
    from cqd_port.data.degrade import LOWRES_DEGRADATIONS

    return any(catalog.concrete(v).degradation in LOWRES_DEGRADATIONS for v in (*run.train, run.test))


def run_notes(run: RunSpec, catalog: DataCatalog) -> list[str]:
    """The interpretation notes of the cells answered by `run`."""
    from cqd_port.data.degrade import DEGRADATIONS

    variants: list[DataVariant] = [catalog.concrete(v) for v in (*run.train, run.test)]
    notes: list[str] = []
    if uses_lowres(run, catalog):
        notes.append(LOWRES_BICUBIC if catalog.lowres_kernel == "bicubic" else LOWRES_BILINEAR)
    for name in dict.fromkeys(v.degradation for v in variants if v.degradation.startswith("edges")):
        description = DEGRADATIONS[name].description if name in DEGRADATIONS else "unknown detector"
        notes.append(f"edges: `{name}`, {description}")
    if any(v.degradation == "distorted" for v in variants):
        notes.append(DISTORTION_SEED)
    if run.class_factor == 2:
        notes.append(AUGMENTATION_2K)
    elif len(run.train) > 1:
        notes.append(AUGMENTATION_K)
    if run.distill and run.distiller is None:  # lambda is CQD's (a later distiller's weight is its own)
        lambda_note = _lambda_note(run)
        if lambda_note:
            notes.append(lambda_note)
    return notes


def cell_notes(method: str, run: RunSpec, catalog: DataCatalog) -> tuple[str, ...]:
    """The notes of one cell: its run's, plus where A-CQD started for an `a_cqd` cell."""
    notes = run_notes(run, catalog)
    if method == "a_cqd":
        notes.append(A_CQD_FROM_IMAGENET if run.init == IMAGENET else A_CQD_FROM_A)
    return tuple(notes)


def grid_settings(a_cqd_start: str, catalog: DataCatalog) -> dict[str, Any]:
    """The grid-wide choices recorded in results.json's `settings`."""
    return {
        "lowres_kernel": catalog.lowres_kernel,
        "a_cqd_start": a_cqd_start,
        "edges": catalog.edges_method or "edges",
    }
