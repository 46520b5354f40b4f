"""The figures: Figure 4 (gradient maps, tau scatter), Table 1/2 bars, training curves.

Every figure is drawn on a `matplotlib.figure.Figure` with the Agg canvas
(no pyplot, no display, no global backend switch) and written through
`cqd_port.fileio.atomic_path`, so an interrupted run never leaves half a PNG.
The functions take plain numbers (read from CSV / results.json / history.json
by the callers), never live models.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from cqd_port.fileio import atomic_path

# One colour per method, the same in every figure.
METHOD_COLOURS: dict[str, str] = {
    "upper_bound": "#4d4d4d",
    "no_adaptation": "#9e9e9e",
    "fine_tuning": "#1f77b4",
    "data_augmentation": "#2ca02c",
    "staged": "#9467bd",
    "cqd": "#d62728",
    "a_cqd": "#ff7f0e",
}
METHOD_LABELS: dict[str, str] = {
    "upper_bound": "Upper bound (A->A)",
    "no_adaptation": "No adaptation (A->B)",
    "fine_tuning": "Fine-tuning (B)",
    "data_augmentation": "Data augm. (A+B)",
    "staged": "Staged (A,B)",
    "cqd": "CQD",
    "a_cqd": "A-CQD",
}
METHOD_ORDER = list(METHOD_COLOURS)
_EXTRA_COLOURS = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def method_colour(method: str) -> str:
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _EXTRA_COLOURS[sum(map(ord, method)) % len(_EXTRA_COLOURS)]


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


def _synthetic_title(title: str, synthetic: bool) -> str:
    return f"SYNTHETIC DATA - {title}" if synthetic else title


# --------------------------------------------------------------------------- Figure 4 (right)


def tau_scatter(
    tau_b: Sequence[float],
    tau_cqd: Sequence[float],
    path: str | os.PathLike[str],
    *,
    title: str = "Fraction of the gradient inside the box (tau)",
    synthetic: bool = False,
) -> Path:
    """Figure 4 right: tau of the B model (x) against tau of the CQD model (y), one dot per image.

    The diagonal separates images where CQD's gradient is more (above) or less
    (below) contained in the box; the two means are drawn as dashed lines and
    a star at (mean tau_B, mean tau_CQD).
    """
    b = np.asarray(tau_b, dtype=float)
    c = np.asarray(tau_cqd, dtype=float)
    keep = np.isfinite(b) & np.isfinite(c)
    b, c = b[keep], c[keep]
    left_out = int((~keep).sum())
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    label = f"images (n={b.size})" if not left_out else f"images (n={b.size}; {left_out} with undefined tau left out)"
    ax.scatter(b, c, s=8, alpha=0.5, color="#1f77b4", edgecolors="none", label=label)
    ax.plot([0, 1], [0, 1], color="black", linewidth=1, label="tau_CQD = tau_B")
    if b.size:
        mb, mc = float(b.mean()), float(c.mean())
        ax.axvline(mb, color="#2ca02c", linestyle="--", linewidth=1, label=f"mean tau_B = {mb:.3f}")
        ax.axhline(mc, color="#d62728", linestyle="--", linewidth=1, label=f"mean tau_CQD = {mc:.3f}")
        ax.plot([mb], [mc], marker="*", markersize=14, color="#ff7f0e", markeredgecolor="black", linestyle="none")
        higher = float((c > b).mean())
        ax.text(0.02, 0.98, f"CQD higher on {100 * higher:.1f}% of the {b.size} images", transform=ax.transAxes, va="top")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("tau, model trained on B")
    ax.set_ylabel("tau, CQD model")
    ax.set_title(_synthetic_title(title, synthetic), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- Figure 4 (left)


@dataclass
class PanelRow:
    """One row of the gradient-map panel.

    `image` is the original image (H x W x 3 uint8) and `box` its 1-based
    inclusive box; each map is in its model's input coordinates with the box
    mapped there (0-based inclusive, as `tau.box_in_input` returns it).
    """

    image: np.ndarray
    box: Sequence[float]
    map_b: np.ndarray
    box_b: tuple[int, int, int, int]
    tau_b: float
    map_cqd: np.ndarray
    box_cqd: tuple[int, int, int, int]
    tau_cqd: float
    caption: str = ""


def _draw_box(ax, x1: float, y1: float, x2: float, y2: float, colour: str) -> None:
    # Pixel k's centre is at k in imshow's coordinates (0-based), so an inclusive
    # box spans [x1 - 0.5, x2 + 0.5].
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, edgecolor=colour, linewidth=1.5))


def _display_map(values: np.ndarray) -> np.ndarray:
    # Darker = larger gradient (as in the paper); clip at the 99th percentile so
    # a few extreme pixels do not wash out the rest.
    values = np.asarray(values, dtype=np.float64)
    top = float(np.percentile(values, 99)) if values.size else 0.0
    if top <= 0:
        top = float(values.max()) if values.size and values.max() > 0 else 1.0
    return np.clip(values / top, 0.0, 1.0)


_CAPTION_CHARS = 40  # characters of a 9-point title that fit over one 3-inch panel column


def gradient_panel(rows: Sequence[PanelRow], path: str | os.PathLike[str], *, synthetic: bool = False) -> Path:
    """Figure 4 left: per row the image, the B model's gradient map and the CQD model's, each with the box."""
    n = max(len(rows), 1)
    fig = Figure(figsize=(9, 3 * n))
    for r, row in enumerate(rows):
        ax_img = fig.add_subplot(n, 3, 3 * r + 1)
        image = np.asarray(row.image)
        ax_img.imshow(image, cmap=None if image.ndim == 3 else "gray")
        x1, y1, x2, y2 = (float(v) - 1 for v in row.box)  # 1-based -> 0-based pixel centres
        _draw_box(ax_img, x1, y1, x2, y2, "#ffd700")
        # Wrapped to the panel's width: a long file name would otherwise run off the figure's edge.
        ax_img.set_title(textwrap.fill(row.caption or "image", width=_CAPTION_CHARS), fontsize=9)
        for col, (values, box, name, value) in enumerate(
            ((row.map_b, row.box_b, "B", row.tau_b), (row.map_cqd, row.box_cqd, "CQD", row.tau_cqd)), start=2
        ):
            ax = fig.add_subplot(n, 3, 3 * r + col)
            # The map is in the network's input coordinates (imageSize, aspect not kept): stretch it
            # back to the original image's aspect ratio so it lines up with the image beside it.
            map_h, map_w = np.shape(values)[:2]
            aspect = (image.shape[0] * map_w) / (image.shape[1] * map_h)
            ax.imshow(_display_map(values), cmap="gray_r", vmin=0, vmax=1, aspect=aspect)
            _draw_box(ax, *box, "#d62728")
            ax.set_title(f"{name}: tau = {value:.3f}", fontsize=9)
        for ax in fig.axes[-3:]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(_synthetic_title("Gradient of log p(true label) w.r.t. the image (darker = larger)", synthetic), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- Tables 1 / 2


def results_bars(
    cells: Sequence[Mapping[str, object]],
    path: str | os.PathLike[str],
    *,
    table: int = 1,
    synthetic: bool = False,
) -> Path:
    """Every cell of Table 1 (or 2) as a bar, grouped by task, one colour per method.

    The paper's number for the same cell is drawn as a black marker with a
    hatched outline bar behind the measured one, so the gap reads directly.
    A cell measured over several seeds (`std` in results.json) is drawn at its
    mean with an error bar of one standard deviation.
    """
    tasks: list[str] = []
    for cell in cells:
        if cell["task"] not in tasks:
            tasks.append(str(cell["task"]))
    methods = sorted({str(c["method"]) for c in cells}, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    width = 0.8 / max(len(methods), 1)
    fig = Figure(figsize=(max(6.0, 1.4 * len(tasks) + 2), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    by_key = {(str(c["task"]), str(c["method"])): c for c in cells}
    drawn_paper_label = False
    handles: list = []
    for m, method in enumerate(methods):
        xs, measured, spread, papers, paper_xs = [], [], [], [], []
        for t, task in enumerate(tasks):
            cell = by_key.get((task, method))
            if cell is None:
                continue
            x = t - 0.4 + width * (m + 0.5)
            accuracy = cell.get("accuracy")
            if accuracy is not None:
                xs.append(x)
                measured.append(float(accuracy))
                spread.append(float(cell.get("std") or 0.0))
            paper = cell.get("paper")
            if paper is not None:
                paper_xs.append(x)
                papers.append(float(paper))
        colour = method_colour(method)
        if paper_xs:
            ax.bar(paper_xs, papers, width=width, fill=False, hatch="///", edgecolor=colour, linewidth=0.6)
        ax.bar(xs, measured, width=width * 0.6, color=colour)
        # The legend is drawn from explicit patches: an empty bar group (a method with only the paper's numbers)
        # would otherwise get matplotlib's default colour in the legend, not the method's.
        name = METHOD_LABELS.get(method, method)
        if xs:
            handles.append(Patch(facecolor=colour, edgecolor=colour, label=name))
        else:
            handles.append(Patch(facecolor="none", edgecolor=colour, hatch="///", label=f"{name}: paper only, not measured"))
        if any(spread):
            ax.errorbar(xs, measured, yerr=spread, fmt="none", ecolor="black", elinewidth=0.8, capsize=2, zorder=4)
        if paper_xs:
            ax.scatter(paper_xs, papers, marker="_", s=120, color="black", zorder=3)
            if not drawn_paper_label:
                handles.insert(0, Line2D([], [], color="black", marker="_", linestyle="none", markersize=11, label="paper (hatched bar, black mark)"))
            drawn_paper_label = True
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel("per-image accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(_synthetic_title(f"Table {table}: measured (solid) vs paper (hatched)", synthetic), fontsize=10)
    ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- training curves

CURVE_METRICS = (("objective", "objective"), ("top1err", "top-1 error"))


def training_curves(
    histories: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    path: str | os.PathLike[str],
    *,
    task: str,
    synthetic: bool = False,
) -> Path:
    """The training curves of one task's methods overlaid: objective and top-1 error, train (solid) and test (dashed).

    `histories[method][split][metric]` is the per-epoch series, split in
    {"train", "test"}, metric in {"objective", "top1err"}; missing series are
    skipped. `histories[method][split]["epoch"]`, when given, places a split's
    values at those epochs (a test set scored after the last epoch only).
    """
    fig = Figure(figsize=(11, 4.2))
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(len(CURVE_METRICS))]
    epochs, highest = 1, {metric: 0.0 for metric, _ in CURVE_METRICS}
    for method in sorted(histories, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m)):
        colour = method_colour(method)
        for ax, (metric, _) in zip(axes, CURVE_METRICS):
            for split, style in (("train", "-"), ("test", "--")):
                series = histories[method].get(split, {}).get(metric)
                if not series:
                    continue
                values = np.asarray(series, dtype=float)
                # at their epochs where history.json says (a test set scored after the last epoch only), else 1, 2, ...
                at = histories[method][split].get("epoch")
                x = np.asarray(at, dtype=float) if at is not None and len(at) == values.size else np.arange(1, values.size + 1)
                epochs = max(epochs, int(x.max()))
                if np.isfinite(values).any():
                    highest[metric] = max(highest[metric], float(np.nanmax(values[np.isfinite(values)])))
                ax.plot(x, values, style, color=colour, marker="." if values.size < 30 else None,
                        label=f"{METHOD_LABELS.get(method, method)} ({split})")
    for ax, (metric, label) in zip(axes, CURVE_METRICS):
        # Whole epochs only, half an epoch of room either side: one epoch is one point at 1, not an axis
        # from 0.945 to 1.05. The objective and the error are never negative; the error is a fraction.
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylim(0, 1 if metric == "top1err" else 1.1 * highest[metric] or 1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(_synthetic_title(f"Training curves, task {task} (solid: train, dashed: test)", synthetic), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
