"""The teacher's logits on the high-quality training images, computed once and cached.

CQD's distillation term needs `f(x_i)`, the `fc8` output of the model trained
on domain A, for every training image `x_i` of A. The teacher never changes
during CQD training, and the original code ran it in test mode (no dropout),
so its logits are a fixed `N x K` table: computing them once saves a teacher
forward pass per batch for 30 epochs (see `benchmarks/bench_train.py`).

The cache is a `.pt` file in `cache_dir` named by a SHA-256 of the teacher's
weights, of the data (its `ImageStore`: sources, settings, average image)
and of the precision (strict fp32 or TF32) and LRN mode. Change any and the
key changes; a cache file whose contents do not match its key
(stale, truncated, foreign) is recomputed and rewritten atomically.

The later distillation methods read other layers of f (`teacher_targets`):
those targets are fixed too and cached the same way (the key also names
the layers) as long as their tables fit `TARGET_CACHE_BUDGET`; larger ones
are recomputed per batch by f on the device (`TeacherTargets.describe()`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_torch_save
from cqd_port.train.objective import class_scores

CACHE_FORMAT = "cqd-port-teacher-logits"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    specs = getattr(model, "specs", None)
    if specs is not None:  # the same weights in a different topology are a different teacher
        digest.update(json.dumps([s.to_dict() if hasattr(s, "to_dict") else str(s) for s in specs], sort_keys=True, default=str).encode())
    digest.update(str(getattr(model, "lrn_mode", "")).encode())
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """SHA-256 identifying what `dataset` yields: its `ImageStore`'s fingerprint.

    A store built from files is identified by its sources and settings (paths,
    labels, sizes and modification times, image size, dtype) and the average
    image; an in-memory store by its bytes and labels (see
    `cqd_port.data.store.ImageStore.fingerprint`).
    """
    from cqd_port.data.store import as_image_store

    return as_image_store(dataset).fingerprint()


def precision_tag(tf32: bool, lrn_mode: str) -> str:
    """The numerical settings a teacher's logits depend on besides its weights: TF32 or strict fp32, and the LRN."""
    return f"{'tf32' if tf32 else 'fp32'}|lrn={lrn_mode}"


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"teacher-logits-{key[:20]}.pt"


@torch.no_grad()
def compute_teacher_logits(
    teacher_model: torch.nn.Module,
    dataset: Any,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    tf32: bool = False,
) -> torch.Tensor:
    """The teacher's scores in test mode for every item, row `index` for the item with that index.

    Reads batches from the data's `ImageStore` on `device`, in strict float32
    unless `tf32`. A network ending in a softmax layer (a deployed model's
    `prob`) is run up to the layer before it: distillation needs logits, not
    probabilities.
    """
    from cqd_port.data.store import as_image_store
    from cqd_port.train.device import configure_determinism

    if len(dataset) == 0:
        raise CqdError("cannot compute teacher logits on an empty training set")
    device = torch.device(device)
    configure_determinism(tf32, device)
    store = as_image_store(dataset).to(device)
    specs = getattr(teacher_model, "specs", None)
    if specs and len(specs) > 1 and specs[-1].type == "softmax" and hasattr(teacher_model, "truncated"):
        teacher_model = teacher_model.truncated(specs[-2].name)
    teacher_model.to(device).eval()
    scores = [class_scores(teacher_model(images)).float() for _positions, images, _labels in store.iter_batches(batch_size)]
    return torch.cat(scores).cpu()


def teacher_logits(
    teacher_model: torch.nn.Module,
    dataset: Any,
    cache_dir: str | Path | None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    tf32: bool = False,
) -> torch.Tensor:
    """Cached `compute_teacher_logits`: a CPU float32 tensor `[N, K]` indexed by dataset index.

    With `cache_dir=None` nothing is cached. The cache key covers the
    teacher's weights and topology, the data (`dataset_fingerprint`) and the
    precision and LRN mode (`precision_tag`). A cache file is used only if
    its stored key equals that and its tensor has one row per item; anything
    else (stale, unreadable) is recomputed and overwritten.
    """
    if cache_dir is None:
        return compute_teacher_logits(teacher_model, dataset, batch_size, device, tf32=tf32)
    key = _cache_key(teacher_model, dataset, tf32)
    path = cache_path(cache_dir, key)
    cached = _read_cache(path, key, len(dataset))  # type: ignore[arg-type]
    if cached is not None:
        return cached
    logits = compute_teacher_logits(teacher_model, dataset, batch_size, device, tf32=tf32)
    atomic_torch_save(path, {"format": CACHE_FORMAT, "key": key, "logits": logits})
    return logits


def _load_keyed(path: Path, file_format: str, key: str) -> dict[str, Any] | None:
    """The cache file's contents if it is one of ours with this key; None for missing, stale, truncated or foreign."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or foreign file: recompute
        return None
    if not isinstance(data, dict) or data.get("format") != file_format or data.get("key") != key:
        return None
    return data


def _cache_key(teacher_model: torch.nn.Module, dataset: Any, tf32: bool, what: str = "") -> str:
    """SHA-256 of f's weights and topology, the data, the precision and LRN mode (and `what` it computes)."""
    precision = precision_tag(tf32, str(getattr(teacher_model, "lrn_mode", "")))
    return hashlib.sha256(f"{weights_fingerprint(teacher_model)}|{dataset_fingerprint(dataset)}|{precision}{what}".encode()).hexdigest()


def _read_cache(path: Path, key: str, n: int) -> torch.Tensor | None:
    data = _load_keyed(path, CACHE_FORMAT, key)
    if data is None:
        return None
    logits = data.get("logits")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        return None
    if not bool(torch.isfinite(logits).all()):
        return None
    return logits.float()


# --------------------------------------------------------------------------- feature targets

TARGETS_FORMAT = "cqd-port-teacher-targets"

TARGET_CACHE_BUDGET = 1 << 30
"""Bytes (1 GiB) up to which f's targets are computed once, kept on the device and cached on disk.

Above it they are recomputed per batch by f on the device. Sizes at 224 x 224
(float32, per image): VGG-M `conv5` 13 x 13 x 512 = 346 KB (CUB's 5994
training images: 2.1 GB, recomputed), `fc7` 16 KB (98 MB, cached), resnet18
`layer4` 7 x 7 x 512 = 100 KB (602 MB, cached), logits 4 bytes x classes."""


class TeacherTargets:
    """f's targets (outputs of its layers `layers` on the high-quality images), by training-item index.

    Cached (`cached` True): one float32 table per layer, computed once (rows
    indexed like the training set). Recomputed: f (frozen, test mode) runs on
    the batch's high-quality images at every step, on the device. Either way
    `batch(index)` gives {layer: targets of those items} without waiting for
    the device; `nbytes` is what the tables take (or would take).
    """

    def __init__(
        self,
        layers: tuple[str, ...],
        item_shapes: dict[str, tuple[int, ...]],
        num_items: int,
        tables: dict[str, torch.Tensor] | None = None,
        teacher_model: torch.nn.Module | None = None,
        store: Any = None,
        budget: int = TARGET_CACHE_BUDGET,
    ) -> None:
        if (tables is None) == (teacher_model is None or store is None):
            raise CqdError("TeacherTargets: give either the cached tables or the teacher and its image store")
        self.layers = layers
        self.item_shapes = item_shapes
        self.num_items = num_items
        self.tables = tables
        self.teacher_model = teacher_model
        self.store = store
        self.budget = budget
        self._hooks = None

    @property
    def cached(self) -> bool:
        return self.tables is not None

    @property
    def nbytes(self) -> int:
        return target_bytes(self.item_shapes, self.num_items)

    def describe(self) -> str:
        """One line for the run's log: which layers, their size, cached or recomputed."""
        from cqd_port.fileio import format_bytes

        shapes = ", ".join(f"{layer} {'x'.join(map(str, shape))}" for layer, shape in self.item_shapes.items())
        how = "cached" if self.cached else "recomputed per batch by f on the device"
        relation = "<=" if self.cached else ">"
        return (
            f"teacher targets {shapes} for {self.num_items} images: {format_bytes(self.nbytes)} "
            f"{relation} cache budget {format_bytes(self.budget)}, {how}"
        )

    def to(self, device: torch.device | str) -> "TeacherTargets":
        """These targets with their tables (or f and its images) on `device`."""
        from cqd_port.data.store import as_image_store

        if self.tables is not None:
            tables = {k: v.to(device) for k, v in self.tables.items()}
            return TeacherTargets(self.layers, self.item_shapes, self.num_items, tables=tables, budget=self.budget)
        model = self.teacher_model.to(device).eval()  # type: ignore[union-attr]
        store = as_image_store(self.store).to(device)
        return TeacherTargets(self.layers, self.item_shapes, self.num_items, teacher_model=model, store=store, budget=self.budget)

    @torch.no_grad()
    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """{layer: f's output for the items `index`} on the device of the tables (or of f)."""
        if self.tables is not None:
            return {layer: table[index] for layer, table in self.tables.items()}
        from cqd_port.models.features import FeatureHooks

        if self._hooks is None:
            self._hooks = FeatureHooks(self.teacher_model, self.layers)  # type: ignore[arg-type]
        inputs, _labels = self.store.batch(index)
        return _teacher_outputs(self.teacher_model, self._hooks, inputs, self.layers)  # type: ignore[arg-type]


def target_bytes(item_shapes: dict[str, tuple[int, ...]], num_items: int) -> int:
    """Bytes of float32 tables with `num_items` rows of these per-item shapes."""
    return int(num_items * sum(4 * int(np.prod(shape)) for shape in item_shapes.values()))


def _teacher_outputs(model: torch.nn.Module, hooks: Any, inputs: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from cqd_port.models.features import LOGITS

    with hooks.capture():
        output = model(inputs)
    return {layer: (class_scores(output) if layer == LOGITS else hooks.get(layer)).float() for layer in layers}


def _target_network(teacher_model: torch.nn.Module, layers: tuple[str, ...]) -> torch.nn.Module:
    """f as far as the targets need it: without a final softmax, and cut after the layer when only one is read."""
    from cqd_port.models.features import LOGITS

    specs = getattr(teacher_model, "specs", None)
    names = getattr(teacher_model, "layer_names", None)
    if hasattr(teacher_model, "truncated") and names:
        if LOGITS not in layers and len(layers) == 1 and layers[0] in names:
            return teacher_model.truncated(layers[0])  # type: ignore[operator]
        if specs and len(specs) > 1 and specs[-1].type == "softmax":
            return teacher_model.truncated(specs[-2].name)  # type: ignore[operator]
    return teacher_model


def teacher_targets(
    teacher_model: torch.nn.Module,
    dataset: Any,
    layers: tuple[str, ...],
    cache_dir: str | Path | None,
    budget: int = TARGET_CACHE_BUDGET,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    tf32: bool = False,
) -> TeacherTargets:
    """f's outputs at `layers` (`logits` for its output) on `dataset`, cached when they fit `budget` bytes.

    `dataset` holds f's (high-quality) images, item `i` paired with training
    item `i` of g. f runs in test mode (no dropout), unchanged by training,
    so its targets are fixed: when `target_bytes` <= `budget` they are
    computed once (and kept in `cache_dir`, keyed like `teacher_logits` plus
    the layer names); otherwise `TeacherTargets` recomputes them per batch
    (its `describe()` says which). Unknown layer names raise `CqdError`.
    """
    from cqd_port.data.store import as_image_store
    from cqd_port.models.features import FeatureHooks, find_layer, LOGITS
    from cqd_port.train.device import configure_determinism

    layers = tuple(dict.fromkeys(layers))
    if not layers:
        raise CqdError("teacher_targets: name at least one layer of f")
    if len(dataset) == 0:
        raise CqdError("cannot compute teacher targets on an empty training set")
    for layer in layers:
        if layer != LOGITS:
            find_layer(teacher_model, layer)
    device = torch.device(device)
    configure_determinism(tf32, device)
    network = _target_network(teacher_model, layers).to(device).eval()
    store = as_image_store(dataset).to(device)
    hooks = FeatureHooks(network, layers)
    try:
        with torch.no_grad():
            probe = _teacher_outputs(network, hooks, store.batch([0])[0], layers)
        shapes = {layer: tuple(int(d) for d in value.shape[1:]) for layer, value in probe.items()}
        n = len(store)
        if target_bytes(shapes, n) > budget:
            return TeacherTargets(layers, shapes, n, teacher_model=network, store=store, budget=budget)
        key = None
        if cache_dir is not None:
            key = _cache_key(teacher_model, dataset, tf32, f"|layers={','.join(layers)}")
            tables = _read_targets(Path(cache_dir) / f"teacher-targets-{key[:20]}.pt", key, shapes, n)
            if tables is not None:
                return TeacherTargets(layers, shapes, n, tables=tables, budget=budget)
        parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
        with torch.no_grad():
            for _positions, images, _labels in store.iter_batches(batch_size):
                for layer, value in _teacher_outputs(network, hooks, images, layers).items():
                    parts[layer].append(value.cpu())
    finally:
        hooks.remove()
    tables = {layer: torch.cat(values) for layer, values in parts.items()}
    if key is not None:
        atomic_torch_save(Path(cache_dir) / f"teacher-targets-{key[:20]}.pt", {"format": TARGETS_FORMAT, "key": key, "tables": tables})  # type: ignore[arg-type]
    return TeacherTargets(layers, shapes, n, tables=tables, budget=budget)


def _read_targets(path: Path, key: str, shapes: dict[str, tuple[int, ...]], n: int) -> dict[str, torch.Tensor] | None:
    data = _load_keyed(path, TARGETS_FORMAT, key)
    if data is None:
        return None
    tables = data.get("tables")
    if not isinstance(tables, dict) or set(tables) != set(shapes):
        return None
    for layer, table in tables.items():
        if not isinstance(table, torch.Tensor) or tuple(table.shape) != (n, *shapes[layer]) or not bool(torch.isfinite(table).all()):
            return None
    return {layer: tables[layer].float() for layer in shapes}
