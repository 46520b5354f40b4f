"""Batches as the original code fed the network.

Per image, as the released MATLAB code did: `imread` (RGB; a grayscale file
becomes three equal channels), `single(...)`, `imresize` straight to the
model's `imageSize` (bicubic with antialiasing, aspect ratio NOT kept, on
single precision so nothing is rounded or clipped), minus the model's
`averageImage`. No augmentation, no cropping, no flipping. PyTorch's usual
pipeline (torchvision `Resize` keeps the aspect ratio, resizes uint8 with a
different kernel, then divides by 255 and normalises by std) differs on
every one of those points.

Items are `(image CHW float32, label, position)`: the position in the
record list lets the trainer look up cached teacher logits.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cqd_port.data.images import read_image_rgb
from cqd_port.data.records import DatasetIndex, ImageRecord
from cqd_port.errors import CqdError
from cqd_port.layout import image_to_nchw

__all__ = ["ImageFolderDataset", "PreloadedDataset", "make_loader", "paired_records", "preload", "prepare_image", "read_image_rgb"]


def _check_average(average_image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    avg = np.asarray(average_image, dtype=np.float32)
    if avg.ndim == 1 and avg.shape[0] == 3:
        avg = avg.reshape(1, 1, 3)
    if avg.ndim != 3 or avg.shape[2] != 3 or avg.shape[:2] not in ((1, 1), tuple(image_size)):
        raise CqdError(
            f"averageImage of shape {tuple(np.shape(average_image))} does not fit imageSize {tuple(image_size)}; "
            "it must be 3, 1x1x3 or HxWx3 with H x W = imageSize (check the model's meta.normalization)"
        )
    return avg


def prepare_image(image_rgb: np.ndarray, image_size: tuple[int, int], average_image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 HxWx3 resized to `image_size` (MATLAB imresize on single) minus the average."""
    from cqd_port.imresize import imresize

    data = image_rgb.astype(np.float32)
    if data.shape[:2] != tuple(image_size):
        data = imresize(data, size=tuple(image_size), method="bicubic", antialiasing=True).astype(np.float32)
    return data - average_image


class ImageFolderDataset(Dataset):
    """`records` of `index` as network inputs: `(CHW float32 tensor, label, position in records)`."""

    def __init__(self, index: DatasetIndex, records: Sequence[ImageRecord], image_size: tuple[int, int], average_image: np.ndarray):
        self.index = index
        self.records = list(records)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.average_image = _check_average(average_image, self.image_size)
        self.paths = [index.resolve(r) for r in self.records]  # refuses escaping paths up front

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        image = prepare_image(read_image_rgb(self.paths[position]), self.image_size, self.average_image)
        return image_to_nchw(image)[0], int(self.records[position].label), int(position)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]


class PreloadedDataset(Dataset):
    """The same items as `ImageFolderDataset`, decoded once into one N x 3 x H x W tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.images = images
        self.label_tensor = labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        return self.images[position], int(self.label_tensor[position]), int(position)

    @property
    def labels(self) -> list[int]:
        return [int(v) for v in self.label_tensor]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `dataset` whose shuffling order depends only on `seed` (and the epoch count)."""
    if batch_size < 1:
        raise CqdError(f"batch size {batch_size} must be at least 1")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    extra: dict = {}
    if workers > 0:
        # Not fork: a forked worker can inherit a lock held by one of the parent's threads (cv2, OpenMP) and hang.
        import multiprocessing

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        extra = {"multiprocessing_context": method, "persistent_workers": True, "worker_init_fn": _init_worker}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=max(0, int(workers)),
        generator=generator,
        pin_memory=pin_memory,
        drop_last=False,
        **extra,
    )


def _init_worker(_worker_id: int) -> None:
    # One image per worker at a time: cv2's own thread pool would oversubscribe the cores.
    cv2.setNumThreads(1)


def preload(dataset: ImageFolderDataset, workers: int = 0, progress: bool = False) -> PreloadedDataset:
    """Decode every image of `dataset` once into memory (for small data sets)."""
    n = len(dataset)
    h, w = dataset.image_size
    images = torch.empty((n, 3, h, w), dtype=torch.float32)
    labels = torch.empty((n,), dtype=torch.long)
    loader = make_loader(dataset, batch_size=32, shuffle=False, workers=workers)
    done = 0
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("decoding images", total=n)
    try:
        for batch, batch_labels, positions in loader:
            images[positions] = batch
            labels[positions] = batch_labels
            done += len(positions)
            if bar is not None:
                bar.update(task, completed=done)
    finally:
        if bar is not None:
            bar.stop()
    return PreloadedDataset(images, labels)


def paired_records(
    index_a: DatasetIndex, index_b: DatasetIndex, train: bool | None = None
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The records of A and B in the same order, checked to be the same images.

    Two prepared variants pair up when they list the same relative paths
    with the same labels and split flags, in the same order. `train` picks
    the training (True), test (False) or all (None) records.
    """
    a = [r for r in index_a.records if train is None or r.train == train]
    b = [r for r in index_b.records if train is None or r.train == train]
    if len(a) != len(b):
        raise CqdError(
            f"datasets '{index_a.name}' ({index_a.root}, {len(a)} images) and '{index_b.name}' ({index_b.root}, {len(b)} images) "
            "do not pair up; prepare both from the same dataset"
        )
    for position, (ra, rb) in enumerate(zip(a, b)):
        if ra.path != rb.path or ra.label != rb.label or ra.train != rb.train:
            raise CqdError(
                f"datasets {index_a.root} and {index_b.root} differ at image {position + 1} ({ra.path} vs {rb.path}); "
                "prepare both variants from the same dataset"
            )
    return a, b
