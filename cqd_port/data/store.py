"""The one data path: every image of a data variant decoded ONCE into a tensor store.

CQD's preprocessing is deterministic (no augmentation, no cropping, no
flipping: see `cqd_port.data.batches`), so an image's network input never
changes between epochs. `ImageStore` holds the decoded images of a list of
records as one `N x 3 x H x W` tensor, and every consumer (training,
evaluation, teacher logits, the gradient analysis) reads batches from it by
index:

* **uint8** where the released code read `imageSize` uint8 files (the
  degraded variants that `save_images.m` wrote as 224x224 JPEGs): the stored
  bytes are the decoded pixels, converted to float32 only per batch.
* **float32** where the released code resized on the fly (any image whose
  size differs from the network's, e.g. native-resolution photographs):
  `imresize` in single precision (bicubic, antialiased, no rounding, as
  `imdb_get_batch` did), done once at build time and stored unrounded.

The model's `averageImage` is NOT in the store: `batch()` subtracts it as
stored (`1x1x3` stays a colour, a full `HxWx3` image is subtracted pixel by
pixel) on the store's device, in float32, so the values equal those of the
per-image pipeline bit for bit (uint8 -> float32 is exact, the subtraction
is the same IEEE operation wherever it runs).

On disk (`build_store(..., cache_dir=...)`), a store is a `.npy` file
memory-mapped on reading, named by a SHA-256 of its sources (relative path,
label, size and modification time of every file, the dataset root) and
settings (image size, crop boxes, dtype, format version): change any of them
and the store is rebuilt; an unreadable or mismatching file is rebuilt too.
`ImageStore.to(device)` copies it to the GPU once per run (CUB: about 2 GB
as uint8, 7 GB as float32). If the GPU is too small, the store stays in
(pinned) host memory and each batch is gathered there and copied
asynchronously: slower, but it runs. Shuffling is a permutation of indices
drawn from the trainer's seeded generator; there are no DataLoader workers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_path, atomic_write_json, remove_stale_temporaries

__all__ = ["ImageStore", "as_image_store", "build_store", "check_average", "store_key"]

STORE_FORMAT = 1
_DTYPES = {"uint8": np.uint8, "float32": np.float32}


def check_average(average_image: Any, image_size: tuple[int, int]) -> np.ndarray:
    """The model's `averageImage` as `1x1x3` or `HxWx3` float32 (a 3-vector becomes 1x1x3); refuses other shapes."""
    avg = np.asarray(average_image, dtype=np.float32)
    if avg.ndim == 1 and avg.shape[0] == 3:
        avg = avg.reshape(1, 1, 3)
    if avg.ndim != 3 or avg.shape[2] != 3 or avg.shape[:2] not in ((1, 1), tuple(image_size)):
        raise CqdError(
            f"averageImage of shape {tuple(np.shape(average_image))} does not fit imageSize {tuple(image_size)}; "
            "it must be 3, 1x1x3 or HxWx3 with H x W = imageSize (check the model's meta.normalization)"
        )
    return avg


class ImageStore:
    """Decoded images (`N x 3 x H x W`, uint8 or float32), labels, and the average to subtract per batch.

    `batch(indices)` gives float32 network inputs (average subtracted) and
    labels, on the store's device; `indices` may be a list or a tensor (on
    any device). The same stored images serve models with different average
    images through `with_average`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, average_image: Any = None, key: str = "") -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W, got {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 or float32, got {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels.long()
        size = (int(images.shape[2]), int(images.shape[3]))
        avg = check_average(np.zeros(3, np.float32) if average_image is None else average_image, size)
        self.average_image = avg  # HxWx3 / 1x1x3 numpy, as the model's meta has it
        from cqd_port.layout import image_to_nchw

        self.average = image_to_nchw(avg).to(images.device)  # 1 x 3 x (1|H) x (1|W)
        self.key = key
        self._host_pinned = False

    # --- basic facts
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.images.shape[2]), int(self.images.shape[3]))

    @property
    def device(self) -> torch.device:
        return self.average.device

    def fingerprint(self) -> str:
        """What the store yields: its sources' key (or its bytes) plus the average image."""
        digest = hashlib.sha256()
        if self.key:
            digest.update(f"key|{self.key}|".encode())
        else:
            digest.update(f"bytes|{self.images.dtype}|{tuple(self.images.shape)}|".encode())
            digest.update(self.images.detach().cpu().contiguous().numpy().tobytes())
        digest.update(self.labels.detach().cpu().numpy().astype(np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.average_image, dtype=np.float32).tobytes())
        return digest.hexdigest()

    # --- views
    def with_average(self, average_image: Any) -> "ImageStore":
        """The same images (not copied) with another model's average image."""
        out = ImageStore(self.images, self.labels, average_image, self.key)
        out._host_pinned = self._host_pinned
        return out

    def subset(self, positions: Sequence[int]) -> "ImageStore":
        """The images at `positions`, in that order (a copy)."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        key = hashlib.sha256(f"{self.key}|subset|{index.tolist()}".encode()).hexdigest() if self.key else ""
        return ImageStore(self.images[index.to(self.images.device)], self.labels[index.to(self.labels.device)], self.average_image, key)

    @staticmethod
    def concat(stores: Sequence["ImageStore"]) -> "ImageStore":
        """Stores one after the other, indices renumbered (the A+B training set); same size, dtype promoted."""
        if not stores:
            raise ValueError("nothing to concatenate")
        first = stores[0]
        if any(s.image_size != first.image_size for s in stores):
            raise CqdError("stores of different image sizes cannot be concatenated; prepare both variants at the network's size")
        if any(not np.array_equal(s.average_image, first.average_image) for s in stores):
            raise CqdError("stores with different average images cannot be concatenated")
        dtype = torch.uint8 if all(s.images.dtype == torch.uint8 for s in stores) else torch.float32
        images = torch.cat([s.images.to(dtype) for s in stores])
        labels = torch.cat([s.labels for s in stores])
        key = hashlib.sha256("|".join(s.key for s in stores).encode()).hexdigest() if all(s.key for s in stores) else ""
        return ImageStore(images, labels, first.average_image, key)

    def to(self, device: torch.device | str) -> "ImageStore":
        """The store on `device` (itself when already there). A CUDA device too small keeps it in pinned host memory."""
        device = torch.device(device)
        if device == self.device or (self._host_pinned and device.type == "cuda"):
            return self
        if device.type == "cuda":
            try:
                moved = ImageStore(self.images.to(device), self.labels.to(device), self.average_image, self.key)
                return moved
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                host = ImageStore(self.images.pin_memory(), self.labels.pin_memory(), self.average_image, self.key)
                host.average = host.average.to(device)
                host._host_pinned = True
                return host
        return ImageStore(self.images.to(device), self.labels.to(device), self.average_image, self.key)

    # --- batches
    def batch(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network inputs (float32 `N x 3 x H x W`, average subtracted) and labels for `indices`; no host sync."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if self._host_pinned:  # gather on the host, copy asynchronously
            index = index.cpu()
            images = self.images[index].pin_memory().to(self.device, non_blocking=True)
            labels = self.labels[index].pin_memory().to(self.device, non_blocking=True)
        else:
            index = index.to(self.images.device, non_blocking=True)
            images = self.images[index]
            labels = self.labels[index]
        return images.to(torch.float32) - self.average, labels

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        """`(CHW float32, label, position)`: the item interface of a Dataset (for inspection; batches use `batch`)."""
        images, labels = self.batch([int(position)])
        return images[0], int(labels[0]), int(position)

    def iter_batches(self, batch_size: int, positions: Sequence[int] | None = None):
        """`(positions tensor, inputs, labels)` in order, `batch_size` at a time."""
        order = torch.arange(len(self)) if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
        order = order.to(self.images.device if not self._host_pinned else "cpu")
        for start in range(0, int(order.shape[0]), batch_size):
            chunk = order[start : start + batch_size]
            inputs, labels = self.batch(chunk)
            yield chunk, inputs, labels


# --------------------------------------------------------------------------- building

def store_key(
    root: str | os.PathLike[str],
    paths: Sequence[str],
    labels: Sequence[int],
    image_size: tuple[int, int],
    boxes: Sequence[Sequence[float]] | None,
    dtype: str,
    extra: str = "",
) -> str:
    """SHA-256 of the sources (relative path, label, size, mtime of every file, root) and the settings."""
    digest = hashlib.sha256()
    digest.update(f"cqd-port-store|{STORE_FORMAT}|{Path(root).resolve()}|{tuple(image_size)}|{dtype}|{extra}|".encode())
    for i, (path, label) in enumerate(zip(paths, labels)):
        full = Path(root) / path
        try:
            st = full.stat()
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        box = "" if boxes is None else ",".join(f"{float(v):.6g}" for v in boxes[i])
        digest.update(f"{path}|{int(label)}|{stamp}|{box}\n".encode())
    return digest.hexdigest()


def _decode(path: Path, image_size: tuple[int, int], box: Sequence[float] | None, dtype: str) -> np.ndarray:
    """One image as the released code fed it, before the average: uint8 as read, or float32 resized in single."""
    from cqd_port.data.images import read_image_rgb

    image = read_image_rgb(path)
    if box is not None:  # MATLAB im(y1:y2, x1:x2, :), as the cropped domain was made
        from cqd_port.data.degrade import crop_to_box

        image = crop_to_box(image, box)
    if dtype == "uint8":
        if image.shape[:2] != tuple(image_size):
            raise _SizeMismatch(f"{path} is {image.shape[0]}x{image.shape[1]}, not {image_size[0]}x{image_size[1]}")
        return image
    data = image.astype(np.float32)
    if data.shape[:2] != tuple(image_size):
        from cqd_port.imresize import imresize

        data = imresize(data, size=tuple(image_size), method="bicubic", antialiasing=True).astype(np.float32)
    return data


class _SizeMismatch(Exception):
    pass


def build_store(
    root: str | os.PathLike[str],
    paths: Sequence[str],
    labels: Sequence[int],
    image_size: tuple[int, int],
    *,
    boxes: Sequence[Sequence[float]] | None = None,
    dtype: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    average_image: Any = None,
    progress: bool = False,
    on_image: Callable[[int], None] | None = None,
) -> ImageStore:
    """Decode `paths` (relative to `root`) once into an `ImageStore` of `image_size` images.

    `dtype` "uint8" keeps the decoded pixels (every image must already be
    `image_size`, crops excluded), "float32" resizes each in single precision
    as `imdb_get_batch` did, "auto" picks uint8 when there is no crop and
    every file header says `image_size`, else float32. With `cache_dir` the
    store is written there as a memory-mapped `.npy` named by `store_key`
    and reused while the sources and settings are unchanged.
    """
    from cqd_port.data.images import image_size as header_size

    image_size = (int(image_size[0]), int(image_size[1]))
    paths = [str(p) for p in paths]
    labels_list = [int(v) for v in labels]
    if len(paths) != len(labels_list) or (boxes is not None and len(boxes) != len(paths)):
        raise ValueError("paths, labels and boxes differ in length")
    if dtype == "auto":
        same = boxes is None and all(header_size(Path(root) / p) == image_size for p in paths)
        dtype = "uint8" if same else "float32"
    if dtype not in _DTYPES:
        raise CqdError(f"store dtype '{dtype}' unknown; use uint8, float32 or auto")
    key = store_key(root, paths, labels_list, image_size, boxes, dtype)
    label_tensor = torch.tensor(labels_list, dtype=torch.long)
    shape = (len(paths), 3, *image_size)
    target = None
    if cache_dir is not None:
        target = Path(cache_dir) / f"store-{key[:24]}.npy"
        cached = _open_cached(target, key, shape, dtype)
        if cached is not None:
            return ImageStore(cached, label_tensor, average_image, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, [".store-*.tmp.npy"])  # stores of killed builds (dead writers only)

    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"decoding {len(paths)} images once", total=len(paths))
    try:
        if target is None:
            array = np.empty(shape, dtype=_DTYPES[dtype])
            _fill(array, root, paths, image_size, boxes, dtype, bar, on_image)
            images = torch.from_numpy(array)
        else:
            with atomic_path(target, _npy_bytes(shape, dtype)) as tmp:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=_DTYPES[dtype], shape=shape)
                _reserve(tmp)
                _fill(array, root, paths, image_size, boxes, dtype, bar, on_image)
                array.flush()
                del array
            atomic_write_json(target.with_suffix(".json"), {"format": STORE_FORMAT, "key": key, "shape": list(shape), "dtype": dtype, "count": len(paths)})
            images = _open_cached(target, key, shape, dtype)
            assert images is not None
    finally:
        if bar is not None:
            bar.stop()
    return ImageStore(images, label_tensor, average_image, key)


def _npy_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """The size of the store's `.npy` file: the pixels plus a generous header (checked against the free space first)."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize + 4096


def _reserve(path: Path) -> None:
    """Allocate every block of the memory-mapped file now.

    `open_memmap` makes a sparse file; a page written into a hole on a full disk
    kills the process with SIGBUS, no message. Reserved blocks fail here
    instead, with ENOSPC, which `atomic_path` turns into the disk-full line.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # file systems without it: the space check stands
            raise
    except AttributeError:  # no posix_fallocate on this platform
        pass
    finally:
        os.close(fd)


def _fill(array: np.ndarray, root, paths, image_size, boxes, dtype, bar, on_image) -> None:
    from cqd_port.layout import image_to_nchw

    for i, path in enumerate(paths):
        try:
            decoded = _decode(Path(root) / path, image_size, None if boxes is None else boxes[i], dtype)
        except _SizeMismatch as exc:
            raise CqdError(f"store of uint8 {image_size[0]}x{image_size[1]} images: {exc}; build it with dtype float32 (or auto)") from None
        if dtype == "uint8":
            array[i] = np.ascontiguousarray(decoded.transpose(2, 0, 1))
        else:
            array[i] = image_to_nchw(decoded)[0].numpy()
        if bar is not None:
            bar.advance(bar.task_ids[0])
        if on_image is not None:
            on_image(i)


def _open_cached(target: Path, key: str, shape: tuple[int, ...], dtype: str) -> torch.Tensor | None:
    meta_path = target.with_suffix(".json")
    if not target.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or meta.get("format") != STORE_FORMAT:
            return None
        array = np.load(target, mmap_mode="c")  # copy-on-write map: writable view, the file is never modified
    except (OSError, ValueError):
        return None
    if tuple(array.shape) != tuple(shape) or array.dtype != _DTYPES[dtype]:
        return None
    return torch.from_numpy(array)


def as_image_store(data: Any) -> ImageStore:
    """`data` as an `ImageStore`: a store is returned as it is; any Dataset of `(CHW image, label, index)` is decoded once.

    The fallback reads every item once in this process (no workers) and
    keeps float32 images, placed at the item's own index.
    """
    if isinstance(data, ImageStore):
        return data
    to_store = getattr(data, "to_store", None)
    if callable(to_store):
        return to_store()
    n = len(data)
    if n == 0:
        raise CqdError("the data set is empty; check the split")
    images: torch.Tensor | None = None
    labels = torch.full((n,), -1, dtype=torch.long)
    for position in range(n):
        image, label, index = data[position]
        image = torch.as_tensor(image, dtype=torch.float32)
        index = int(index)
        if not 0 <= index < n:
            raise CqdError(f"data set yields index {index} outside 0..{n - 1}; indices must number the list")
        if images is None:
            images = torch.empty((n, *image.shape), dtype=torch.float32)
        images[index] = image
        labels[index] = int(label)
    assert images is not None
    if bool((labels < 0).any()):
        raise CqdError(f"data set yields no item for {int((labels < 0).sum())} of the indices 0..{n - 1}")
    return ImageStore(images, labels)
