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
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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
    precision = precision_tag(tf32, str(getattr(teacher_model, "lrn_mode", "")))
    key = hashlib.sha256(f"{weights_fingerprint(teacher_model)}|{dataset_fingerprint(dataset)}|{precision}".encode()).hexdigest()
    path = cache_path(cache_dir, key)
    cached = _read_cache(path, key, len(dataset))  # type: ignore[arg-type]
    if cached is not None:
        return cached
    logits = compute_teacher_logits(teacher_model, dataset, batch_size, device, tf32=tf32)
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
