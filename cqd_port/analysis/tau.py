"""The localization score tau of the paper's Section 5.

    tau = (sum over pixels i in the box of ||G_i||_2) / (sum over all pixels of ||G_i||_2)

"A model based on a perfect object detector will have tau = 1." The gradient
maps live in the network's input coordinates (the image resized straight to
imageSize, x and y scaled separately), while the boxes are annotated on the
original image, 1-based and inclusive (x1 y1 x2 y2), so the box is mapped
first (`box_in_input`).

Box mapping and rounding. MATLAB's `imresize` maps output pixel centre u
(1-based) to input coordinate x = u / s + (1 - 1/s) / 2, with s = out / in
per axis: the two images' outer pixel edges coincide. Pixel k (1-based) of
the original covers [k - 1, k] in edge coordinates (0 at the image's outer
edge), so the box covers [x1 - 1, x2] there, and [s (x1 - 1), s x2] in the
resized image. An input pixel j (0-based, covering [j, j + 1]) is in the box
when its centre j + 0.5 lies in that interval (ties included):

    first = ceil(s (x1 - 1) - 0.5),  last = floor(s x2 - 0.5)   (0-based, inclusive)

clipped to the image; a box thinner than one input pixel keeps the one pixel
holding its centre, so the box is never empty.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cqd_port.analysis.gradients import PreprocessingSpec, maps_for_dataset, preprocessing_from_meta
from cqd_port.data.images import image_size
from cqd_port.errors import CqdError
from cqd_port.experiments.run import FINAL_MODEL
from cqd_port.fileio import atomic_write_json, atomic_write_text
from cqd_port.seeds import check_seed

if TYPE_CHECKING:
    from cqd_port.data.records import DatasetIndex, ImageRecord


def _axis_range(lo: float, hi: float, in_size: int, out_size: int) -> tuple[int, int]:
    scale = out_size / in_size
    first = math.ceil(scale * (lo - 1) - 0.5)
    last = math.floor(scale * hi - 0.5)
    if last < first:  # thinner than one output pixel: keep the pixel holding the box's centre
        centre = scale * ((lo - 1) + hi) / 2
        first = last = int(math.floor(centre))
    first = min(max(first, 0), out_size - 1)
    last = min(max(last, 0), out_size - 1)
    return first, last


def box_in_input(
    box: Sequence[float], original_size: tuple[int, int], input_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Map a 1-based inclusive box (x1, y1, x2, y2) on an H x W original into the resized input.

    `original_size` and `input_size` are (height, width). Returns the box in
    the input as 0-based inclusive pixel indices (x1, y1, x2, y2); see the
    module docstring for the rounding rule.
    """
    if len(box) != 4:
        raise CqdError(f"a box has 4 numbers (x1 y1 x2 y2, 1-based inclusive), got {list(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    orig_h, orig_w = (int(v) for v in original_size)
    in_h, in_w = (int(v) for v in input_size)
    if min(orig_h, orig_w, in_h, in_w) <= 0:
        raise CqdError(f"image sizes must be positive, got original {original_size} and input {input_size}")
    if x2 < x1 or y2 < y1:
        raise CqdError(f"box {list(box)} has x2 < x1 or y2 < y1 (expected 1-based inclusive x1 y1 x2 y2)")
    col0, col1 = _axis_range(x1, x2, orig_w, in_w)
    row0, row1 = _axis_range(y1, y2, orig_h, in_h)
    return col0, row0, col1, row1


def box_mask(input_box: tuple[int, int, int, int], input_size: tuple[int, int]) -> np.ndarray:
    """Boolean H x W mask of a 0-based inclusive box (x1, y1, x2, y2) as `box_in_input` returns it."""
    height, width = input_size
    mask = np.zeros((int(height), int(width)), dtype=bool)
    x1, y1, x2, y2 = input_box
    mask[y1 : y2 + 1, x1 : x2 + 1] = True
    return mask


def tau(gradient_map: np.ndarray | torch.Tensor, input_box: tuple[int, int, int, int]) -> float:
    """Fraction of the gradient norm inside the box: the paper's tau, in [0, 1].

    `gradient_map` is one H x W map of per-pixel norms (non-negative);
    `input_box` a 0-based inclusive box in the map's coordinates. A map that
    is zero everywhere carries no evidence either way and gives NaN.
    """
    values = gradient_map.detach().cpu().double().numpy() if isinstance(gradient_map, torch.Tensor) else np.asarray(gradient_map, dtype=np.float64)
    if values.ndim != 2:
        raise CqdError(f"a gradient map is H x W, got shape {values.shape}")
    if (values < 0).any():
        raise CqdError("a gradient map holds per-pixel norms and cannot be negative")
    x1, y1, x2, y2 = input_box
    total = values.sum()
    if total <= 0:
        return float("nan")
    inside = values[y1 : y2 + 1, x1 : x2 + 1].sum()
    return float(min(max(inside / total, 0.0), 1.0))


def tau_for_box(
    gradient_map: np.ndarray | torch.Tensor,
    box: Sequence[float],
    original_size: tuple[int, int],
) -> float:
    """tau of a map for a box annotated on the original image (1-based inclusive, original_size = (H, W))."""
    shape = tuple(gradient_map.shape)
    return tau(gradient_map, box_in_input(box, original_size, (shape[0], shape[1])))


# --------------------------------------------------------------------------- tau over a data set (Figure 4)


@dataclass
class TauStudyConfig:
    """`cqd-port analyze gradients`: tau of a B model and a CQD model on the same test images.

    `model_b` / `model_cqd` are run folders (holding `final.pt`) or checkpoint
    files; `data_root` a CUB root or a prepared variant folder whose manifest
    has boxes: the B images of the localization task (full images).
    """

    model_b: Path
    model_cqd: Path
    data_root: Path
    out: Path | None = None  # default: analysis-gradients in the CQD model's run folder (`default_output`)
    n: int = 1000
    seed: int = 0
    batch_size: int = 16
    panel_images: int = 4
    device: str = "auto"  # auto (first CUDA device if any), cpu, cuda or cuda:N
    synthetic: bool | None = None  # None: ask the dataset (prepared manifests say whether they are synthetic)


@dataclass
class TauRow:
    image: str
    image_id: int
    label: int
    tau_b: float
    tau_cqd: float


@dataclass
class TauStudyResult:
    """The study's numbers. Means and the fraction are over the `compared` images whose two taus are both
    defined; `undefined_b` / `undefined_cqd` count the images whose map was zero everywhere (tau NaN)."""

    rows: list[TauRow]
    mean_b: float
    mean_cqd: float
    fraction_cqd_higher: float
    csv_path: Path
    scatter_path: Path
    panel_path: Path
    compared: int = 0
    undefined_b: int = 0
    undefined_cqd: int = 0

    def summary_lines(self) -> list[str]:
        """What `analyze gradients` prints: every count says what it counts, every mean what it is over."""
        lines = [f"images: {len(self.rows)} test images with a box"]
        if self.compared < len(self.rows):
            lines.append(
                f"tau undefined (gradient map zero everywhere) on {len(self.rows) - self.compared} of them "
                f"(B model: {self.undefined_b}, CQD model: {self.undefined_cqd}); written as nan in tau.csv, "
                f"left out of the numbers below"
            )
        compared = f"{self.compared} of {len(self.rows)} images: both taus defined"
        lines += [
            f"mean tau, B model:   {self.mean_b:.4f} (over the images compared: {compared})",
            f"mean tau, CQD model: {self.mean_cqd:.4f} (same images)",
            f"CQD's tau higher than B's on {100 * self.fraction_cqd_higher:.1f}% of the images compared ({compared})",
        ]
        return lines


def resolve_checkpoint(path: str | os.PathLike[str], option: str) -> Path:
    """A run folder -> its `final.pt`; a file stays itself. Missing either -> CqdError naming `option`."""
    path = Path(path)
    if path.is_dir():
        final = path / FINAL_MODEL
        if not final.is_file():
            raise CqdError(
                f"{option} {path}: the run folder has no final.pt (the run has not finished; "
                "finish it with `cqd-port train`/`reproduce` or pass the checkpoint file)"
            )
        return final
    if not path.is_file():
        raise CqdError(f"{option} {path}: no such run folder or checkpoint file; pass a run folder holding final.pt")
    return path


def load_analysis_model(
    path: str | os.PathLike[str], option: str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, PreprocessingSpec]:
    """Load a trained model (eval mode, on `device`) and the preprocessing it was trained with (from its meta).

    A MatConvNet-family checkpoint or a torchvision run's `final.pt`; the
    latter takes 0..255 RGB at its input size (no average to subtract) and
    does its own normalisation inside the module.
    """
    from cqd_port.models.torchvision_nets import is_torchvision_checkpoint, load_torchvision
    from matconvnet_weights.convert import load_model

    checkpoint = resolve_checkpoint(path, option)
    model = load_torchvision(checkpoint) if is_torchvision_checkpoint(checkpoint) else load_model(checkpoint)
    spec = preprocessing_from_meta(getattr(model, "meta", None), source=f"{option} {checkpoint}")
    model.eval()
    return model.to(device), spec


def read_localization_dataset(root: str | os.PathLike[str]) -> DatasetIndex:
    """A CUB root (images.txt) or a prepared variant folder -> `DatasetIndex`."""
    root = Path(root)
    if not root.is_dir():
        raise CqdError(f"--data-root {root} does not exist; pass a CUB_200_2011 root or a prepared variant folder")
    if (root / "images.txt").is_file():
        from cqd_port.data.cub import read_cub

        return read_cub(root)
    from cqd_port.data.prepare import read_prepared

    return read_prepared(root)


def select_records(index: DatasetIndex, n: int, seed: int) -> list[ImageRecord]:
    """n test images with a box, drawn without replacement with `seed`, in dataset order."""
    if n <= 0:
        raise CqdError(f"--n {n}: the number of images must be positive")
    candidates = [r for r in index.test_records() if r.box is not None]
    if not candidates:
        raise CqdError(
            f"dataset '{index.name}' at {index.root} has no test images with a bounding box; "
            "tau needs boxes (use the CUB root or the full-image variant of the localization task)"
        )
    if n >= len(candidates):
        return candidates
    chosen = np.random.default_rng(check_seed(seed, "--seed of analyze gradients")).choice(len(candidates), size=n, replace=False)
    return [candidates[i] for i in sorted(chosen.tolist())]


def _original_box(index, record) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    from cqd_port.data.records import clip_box

    height, width = image_size(index.resolve(record))
    return clip_box(tuple(record.box), width, height), (height, width)


def _fingerprint(config: TauStudyConfig, checkpoints: dict[str, Path], records: list) -> dict[str, Any]:
    def stamp(path: Path) -> list:
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    return {
        "models": {tag: stamp(path) for tag, path in checkpoints.items()},
        "data_root": str(Path(config.data_root).resolve()),
        "seed": config.seed,
        "images": [r.path for r in records],
    }


def _tau_for_model(
    model: nn.Module,
    spec: PreprocessingSpec,
    index,
    records: list,
    geometry: list,
    done: dict[str, float],
    batch_size: int,
    on_batch,
    device: torch.device,
) -> None:
    """Fill `done[path] = tau` for every record not done yet, batch by batch (`on_batch` saves progress)."""
    from cqd_port.data.batches import ImageFolderDataset

    dataset = ImageFolderDataset(index, records, spec.image_size, spec.average_image).to_store()
    todo = [i for i, r in enumerate(records) if r.path not in done]
    for positions, maps in maps_for_dataset(model, dataset, todo, batch_size, device):
        for position, values in zip(positions, maps):
            box, original_size = geometry[position]
            done[records[position].path] = tau_for_box(values, box, original_size)
        on_batch(len(positions))


def _panel_choice(rows: list[TauRow], k: int) -> list[int]:
    """k images spread over the distribution of tau_CQD - tau_B (its quantiles), not just the best cases."""
    finite = [i for i, r in enumerate(rows) if np.isfinite(r.tau_b) and np.isfinite(r.tau_cqd)]
    if k <= 0 or not finite:
        return []
    order = sorted(finite, key=lambda i: rows[i].tau_cqd - rows[i].tau_b)
    if k >= len(order):
        return order
    picks = np.linspace(0, len(order) - 1, k).round().astype(int)
    return [order[p] for p in dict.fromkeys(picks.tolist())]


def write_tau_csv(rows: list[TauRow], path: str | os.PathLike[str]) -> Path:
    """CSV with columns image, label, tau_b, tau_cqd (atomic)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", "tau_b", "tau_cqd"])
    for row in rows:
        writer.writerow([row.image, row.label, f"{row.tau_b:.6f}", f"{row.tau_cqd:.6f}"])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def read_tau_csv(path: str | os.PathLike[str]) -> list[TauRow]:
    """Read back a CSV written by `write_tau_csv` (image_id is not stored: -1)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            TauRow(r["image"], -1, int(r["label"]), float(r["tau_b"]), float(r["tau_cqd"]))
            for r in csv.DictReader(handle)
        ]


def class_label(class_names: list[str], label: int) -> str:
    """`001.Black_footed_Albatross` -> `Black footed Albatross`: a class as a figure names it."""
    if not 0 <= label < len(class_names):
        return f"class {label}"
    name = class_names[label]
    number, dot, rest = name.partition(".")
    return (rest if dot and number.isdigit() else name).replace("_", " ")


def summarize(rows: list[TauRow]) -> tuple[float, float, float]:
    """(mean tau_B, mean tau_CQD, fraction of images where tau_CQD > tau_B), over images with finite tau."""
    pairs = np.array([(r.tau_b, r.tau_cqd) for r in rows], dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    if pairs.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(pairs[:, 0].mean()), float(pairs[:, 1].mean()), float((pairs[:, 1] > pairs[:, 0]).mean())


def run_tau_study(config: TauStudyConfig, progress: Any = None) -> TauStudyResult:
    """Gradient maps and tau of both models on the same n test images; CSV, scatter and panel.

    Resumable: after every batch the taus computed so far are saved to
    `<out>/.tau-progress.json` (keyed by the models' files, the data root,
    the seed and the chosen images), and a rerun skips what is done.
    `progress`, if given, is a callable(tag, advance, total) for a progress bar.
    """
    from cqd_port.analysis.figures import PanelRow, gradient_panel, tau_scatter

    from cqd_port.analysis import default_output

    out = Path(config.out) if config.out is not None else default_output(config.model_cqd, "analysis-gradients")
    if config.batch_size <= 0:
        raise CqdError(f"--batch-size {config.batch_size}: must be positive")
    checkpoints = {
        "b": resolve_checkpoint(config.model_b, "--model-b"),
        "cqd": resolve_checkpoint(config.model_cqd, "--model-cqd"),
    }
    index = read_localization_dataset(config.data_root)
    records = select_records(index, config.n, config.seed)
    geometry = [_original_box(index, r) for r in records]
    from cqd_port.train.device import select_device

    device = select_device(config.device)
    models = {
        "b": load_analysis_model(checkpoints["b"], "--model-b", device),
        "cqd": load_analysis_model(checkpoints["cqd"], "--model-cqd", device),
    }

    progress_path = out / ".tau-progress.json"
    fingerprint = _fingerprint(config, checkpoints, records)
    state: dict[str, Any] = {"fingerprint": fingerprint, "b": {}, "cqd": {}}
    if progress_path.is_file():
        try:
            saved = json.loads(progress_path.read_text(encoding="utf-8"))
            if saved.get("fingerprint") == fingerprint:
                state = saved
        except (OSError, ValueError):
            pass  # unreadable progress: start over

    for tag in ("b", "cqd"):
        model, spec = models[tag]
        done: dict[str, float] = state[tag]

        def on_batch(count: int, tag: str = tag) -> None:
            atomic_write_json(progress_path, state)
            if progress is not None:
                progress(tag, count, len(records))

        if progress is not None:
            progress(tag, 0, len(records))
            progress(tag, sum(r.path in done for r in records), len(records))
        _tau_for_model(model, spec, index, records, geometry, done, config.batch_size, on_batch, device)

    rows = [
        TauRow(r.path, r.image_id, r.label, float(state["b"][r.path]), float(state["cqd"][r.path]))
        for r in records
    ]
    mean_b, mean_cqd, higher = summarize(rows)
    compared = sum(1 for r in rows if math.isfinite(r.tau_b) and math.isfinite(r.tau_cqd))
    undefined_b = sum(1 for r in rows if not math.isfinite(r.tau_b))
    undefined_cqd = sum(1 for r in rows if not math.isfinite(r.tau_cqd))
    if config.synthetic is not None:
        synthetic = config.synthetic
    else:
        from cqd_port.data.synth import is_synthetic

        synthetic = is_synthetic(config.data_root)

    csv_path = write_tau_csv(rows, out / "tau.csv")
    scatter_path = tau_scatter([r.tau_b for r in rows], [r.tau_cqd for r in rows], out / "tau_scatter.png", synthetic=synthetic)

    # Figure 4 left: recompute the few panel images' maps (cheap) rather than keeping 1000 maps.
    chosen = _panel_choice(rows, config.panel_images)
    maps: dict[str, dict[int, np.ndarray]] = {"b": {}, "cqd": {}}
    from cqd_port.data.batches import ImageFolderDataset, read_image_rgb  # the network's own decoding

    for tag in ("b", "cqd"):
        model, spec = models[tag]
        dataset = ImageFolderDataset(index, records, spec.image_size, spec.average_image).to_store()
        for positions, batch_maps in maps_for_dataset(model, dataset, chosen, config.batch_size, device):
            for position, values in zip(positions, batch_maps):
                maps[tag][position] = values.numpy()
    panel_rows = []
    for position in chosen:
        box, original_size = geometry[position]
        row = rows[position]
        panel_rows.append(
            PanelRow(
                image=read_image_rgb(index.resolve(records[position])),
                box=box,
                map_b=maps["b"][position],
                box_b=box_in_input(box, original_size, maps["b"][position].shape),
                tau_b=row.tau_b,
                map_cqd=maps["cqd"][position],
                box_cqd=box_in_input(box, original_size, maps["cqd"][position].shape),
                tau_cqd=row.tau_cqd,
                caption=f"{Path(row.image).name} ({class_label(index.class_names, row.label)})",
            )
        )
    panel_path = gradient_panel(panel_rows, out / "gradient_maps.png", synthetic=synthetic)
    progress_path.unlink(missing_ok=True)
    return TauStudyResult(rows, mean_b, mean_cqd, higher, csv_path, scatter_path, panel_path, compared, undefined_b, undefined_cqd)
