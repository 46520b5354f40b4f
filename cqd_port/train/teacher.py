"""The teacher's logits on the high-quality training images, computed once and cached.

CQD's distillation term needs `f(x_i)`, the `fc8` output of the model trained
on domain A, for every training image `x_i` of A. The teacher never changes
during CQD training, and the original code ran it in test mode (no dropout),
so its logits are a fixed `N x K` table: computing them once saves a teacher
forward pass per batch for 30 epochs (see `benchmarks/bench_train.py`).

The cache is a `.pt` file in `cache_dir` named by a SHA-256 of the teacher's
weights and of the dataset (its record list and preprocessing). Change
either and the key changes; a cache file whose contents do not match its key
(stale, truncated, foreign) is recomputed and rewritten atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable({k: getattr(value, k) for k in value.__dataclass_fields__})
    return repr(value)


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 identifying what `dataset` yields.

    In order of preference: the dataset's own `fingerprint()` (a string);
    its `records` with `image_size` and `average_image` (the preprocessing),
    the root of its `index` and the size and modification time of every file
    in `paths`, as `ImageFolderDataset` has them (so re-prepared images
    invalidate the cache); the bytes of an in-memory `images` tensor and its
    labels (`PreloadedDataset`); otherwise every item's bytes (correct for
    any dataset, but it reads all images once).
    """
    digest = hashlib.sha256()
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        digest.update(b"own|" + str(own()).encode())
        return digest.hexdigest()
    records = getattr(dataset, "records", None)
    if records is not None:
        digest.update(b"records|" + json.dumps(_jsonable(list(records))).encode())
        digest.update(json.dumps(_jsonable(getattr(dataset, "image_size", None))).encode())
        average = getattr(dataset, "average_image", None)
        if average is not None:
            digest.update(np.ascontiguousarray(np.asarray(average, dtype=np.float64)).tobytes())
        index = getattr(dataset, "index", None)
        for name in ("root", "name"):
            if index is not None and hasattr(index, name):
                digest.update(f"index.{name}={_jsonable(getattr(index, name))}".encode())
        for path in getattr(dataset, "paths", None) or []:
            try:
                st = os.stat(path)
                digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                digest.update(f"{path}|missing".encode())
        return digest.hexdigest()
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor) and images.shape[0] == len(dataset):  # type: ignore[arg-type]
        digest.update(f"tensor|{images.dtype}|{tuple(images.shape)}|".encode())
        digest.update(images.detach().cpu().contiguous().numpy().tobytes())
        digest.update(json.dumps([int(dataset[i][1]) for i in range(len(dataset))]).encode())  # type: ignore[arg-type]
        return digest.hexdigest()
    digest.update(f"items|{len(dataset)}|".encode())  # type: ignore[arg-type]
    for i in range(len(dataset)):  # type: ignore[arg-type]
        image, label, index_ = dataset[i]
        digest.update(np.ascontiguousarray(torch.as_tensor(image).cpu().numpy()).tobytes())
        digest.update(f"|{int(label)}|{int(index_)}|".encode())
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"teacher-logits-{key[:20]}.pt"


@torch.no_grad()
def compute_teacher_logits(
    teacher_model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> torch.Tensor:
    """The teacher's scores in test mode for every item, row `index` for the item with that index.

    A network ending in a softmax layer (a deployed model's `prob`) is run up
    to the layer before it: distillation needs logits, not probabilities.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise CqdError("cannot compute teacher logits on an empty training set")
    device = torch.device(device)
    specs = getattr(teacher_model, "specs", None)
    if specs and len(specs) > 1 and specs[-1].type == "softmax" and hasattr(teacher_model, "truncated"):
        teacher_model = teacher_model.truncated(specs[-2].name)
    teacher_model.to(device).eval()
    out: torch.Tensor | None = None
    filled = torch.zeros(n, dtype=torch.bool)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for images, _labels, indices in loader:
        scores = class_scores(teacher_model(images.to(device))).float().cpu()
        indices = torch.as_tensor(indices).long().reshape(-1)
        if indices.min() < 0 or indices.max() >= n:
            raise CqdError(f"dataset yields index {int(indices.max())} outside 0..{n - 1}; indices must number the training list")
        if out is None:
            out = torch.zeros(n, scores.shape[1], dtype=torch.float32)
        out[indices] = scores
        filled[indices] = True
    assert out is not None
    if not bool(filled.all()):
        missing = int((~filled).sum())
        raise CqdError(f"dataset yields no item for {missing} of the indices 0..{n - 1}; indices must number the training list")
    return out


def teacher_logits(
    teacher_model: torch.nn.Module,
    dataset: Dataset,
    cache_dir: str | Path | None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> torch.Tensor:
    """Cached `compute_teacher_logits`: a CPU float32 tensor `[N, K]` indexed by dataset index.

    With `cache_dir=None` nothing is cached. A cache file is used only if its
    stored key equals the fingerprint of this teacher and this dataset and
    its tensor has one row per item; anything else (stale, unreadable) is
    recomputed and overwritten.
    """
    if cache_dir is None:
        return compute_teacher_logits(teacher_model, dataset, batch_size, device, num_workers)
    key = hashlib.sha256(f"{weights_fingerprint(teacher_model)}|{dataset_fingerprint(dataset)}".encode()).hexdigest()
    path = cache_path(cache_dir, key)
    cached = _read_cache(path, key, len(dataset))  # type: ignore[arg-type]
    if cached is not None:
        return cached
    logits = compute_teacher_logits(teacher_model, dataset, batch_size, device, num_workers)
    atomic_torch_save(path, {"format": CACHE_FORMAT, "key": key, "logits": logits})
    return logits


def _read_cache(path: Path, key: str, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or foreign file: recompute
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("key") != key:
        return None
    logits = data.get("logits")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        return None
    if not bool(torch.isfinite(logits).all()):
        return None
    return logits.float()
