"""A figure like the paper's Figure 3: high-quality images (A) above their degraded versions (B).

One panel per cross-quality task of Table 1, built with the same
`degrade` calls and the same source rule (crop or full image) that
`prepare` uses, so the figure shows exactly what the networks are trained
on. Without a Structured Edge Detection model the `edges` panel is replaced
by `edges_sobel`, labelled as such (never passed off as SED).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cqd_port.data.records import DatasetIndex, ImageRecord
from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_path, check_output_file

if TYPE_CHECKING:
    from cqd_port.data.degrade import DegradationConfig


@dataclass(frozen=True)
class Panel:
    title: str
    a: tuple[str, str]  # (degradation, source "box"/"full") of the high-quality row
    b: tuple[str, str]  # the same for the degraded row


CUB_PANELS = (
    Panel("(a) localized / non-localized", ("localized", "full"), ("original", "full")),
    Panel("(b) high / low resolution", ("original", "box"), ("lowres", "box")),
    Panel("(c) color / edges", ("original", "box"), ("edges", "box")),
    Panel("(d) regular / distorted", ("original", "box"), ("distorted", "box")),
    Panel("(e) localized / non-localized low resolution", ("original", "box"), ("lowres", "full")),
)
CARS_PANELS = (
    Panel("(a) high / low resolution", ("original", "full"), ("lowres", "full")),
    Panel("(b) color / edges", ("original", "full"), ("edges", "full")),
)


def row_label(row: str, degradation: str, source: str, dataset: str) -> str:
    """`A: original (box crop)`: the row, the degradation and what part of the image it shows.

    A degradation that crops to the box itself (`localized`) shows the box
    crop although it starts from the full image, so the label names the view,
    not the source. CARS always uses the full image and says nothing.
    """
    from cqd_port.data.degrade import DEGRADATIONS

    if dataset != "cub":
        return f"{row}: {degradation}"
    cropped = source == "box" or DEGRADATIONS[degradation].needs_box
    return f"{row}: {degradation} ({'box crop' if cropped else 'full image'})"


def pick_examples(index: DatasetIndex, n: int) -> list[ImageRecord]:
    """`n` test images (training images when there is no test split) from different classes, deterministic."""
    pool = index.test_records() or index.records
    chosen: list[ImageRecord] = []
    seen: set[int] = set()
    for record in pool:
        if record.label not in seen:
            chosen.append(record)
            seen.add(record.label)
        if len(chosen) == n:
            break
    return chosen


def make_gallery(
    data_root: str | Path,
    out_png: str | Path,
    dataset: str = "cub",
    n: int = 4,
    config: DegradationConfig | None = None,
    sed_model: str | Path | None = None,
) -> Path:
    """Render the Figure-3-like gallery of `dataset` at `data_root` into `out_png` (atomic); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cqd_port.data.degrade import DegradationConfig, degrade_from_source
    from cqd_port.data.images import read_image_rgb
    from cqd_port.data.prepare import image_seed, read_dataset
    from cqd_port.data.synth import is_synthetic

    if n < 1:
        raise CqdError(f"--n {n}: the gallery needs at least one image per row")
    out_png = check_output_file(out_png)  # before any rendering
    config = config if config is not None else DegradationConfig()
    if sed_model is not None:
        config = replace(config, sed_model=str(sed_model))
    index = read_dataset(dataset, data_root)
    examples = pick_examples(index, n)
    if not examples:
        raise CqdError(f"{index.root} lists no images; point --data-root at a dataset")
    missing = [r.path for r in examples if not index.resolve(r).is_file()]
    if missing:
        raise CqdError(f"gallery images missing under {index.root}: {', '.join(missing)}; point --data-root at the complete dataset")
    panels = CUB_PANELS if dataset == "cub" else CARS_PANELS
    notes = []
    if config.sed_model is None:
        panels = tuple(
            replace(p, title=p.title.replace("edges", "Sobel edges (no SED model)"), b=("edges_sobel", p.b[1])) if p.b[0] == "edges" else p
            for p in panels
        )
        notes.append("edges: no SED model given (--sed-model), showing the model-free Sobel map instead")
    synthetic = is_synthetic(index.root)
    images = {r.path: read_image_rgb(index.resolve(r)) for r in examples}

    cols = len(examples)
    grid_cols = min(2, len(panels))
    grid_rows = (len(panels) + grid_cols - 1) // grid_cols
    fig = plt.figure(figsize=(1.7 * cols * grid_cols + 0.6, 3.4 * grid_rows + 0.9))
    # A strip on top for the figure title, so it never overlaps the panel titles.
    header, body = fig.subfigures(2, 1, height_ratios=[0.9, 3.4 * grid_rows])
    subfigs = np.atleast_1d(body.subfigures(grid_rows, grid_cols)).ravel()
    for subfig, panel in zip(subfigs, panels):
        axes = subfig.subplots(2, cols, squeeze=False)
        subfig.suptitle(panel.title, fontsize=10)
        for col, record in enumerate(examples):
            for row, (degradation, source) in enumerate((panel.a, panel.b)):
                crop = source == "box" and record.box is not None
                seed = image_seed(config.seed, record.path)
                picture = degrade_from_source(degradation, images[record.path], record.box, crop, config, seed)
                ax = axes[row, col]
                ax.imshow(picture)
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(row_label("AB"[row], degradation, source, dataset), fontsize=7)
    for extra in subfigs[len(panels) :]:
        extra.set_visible(False)
    title = f"Cross-quality examples, {dataset.upper()} ({index.root.name})"
    if synthetic:
        title = f"SYNTHETIC data - {title}"
    header.suptitle(title + ("\n" + "; ".join(notes) if notes else ""), fontsize=11, y=0.7)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
