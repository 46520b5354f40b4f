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
record list lets the trainer look up cached teacher logits. Training,
evaluation and the analysis do not read items one by one: they decode every
image once into an `ImageStore` (`to_store`, `cqd_port.data.store`), whose
batches give the same values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cqd_port.data.images import read_image_rgb
from cqd_port.data.records import DatasetIndex, ImageRecord
from cqd_port.data.store import ImageStore, build_store, check_average
from cqd_port.errors import CqdError
from cqd_port.layout import image_to_nchw

__all__ = ["ImageFolderDataset", "paired_records", "prepare_image", "read_image_rgb"]


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
        self.average_image = check_average(average_image, self.image_size)
        self.paths = [index.resolve(r) for r in self.records]  # refuses escaping paths up front

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        image = prepare_image(read_image_rgb(self.paths[position]), self.image_size, self.average_image)
        return image_to_nchw(image)[0], int(self.records[position].label), int(position)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def to_store(self, cache_dir: str | Path | None = None, progress: bool = False) -> ImageStore:
        """These items decoded once into an `ImageStore` (uint8 when every file is `image_size`, else float32)."""
        return build_store(
            self.index.root,
            [r.path for r in self.records],
            [r.label for r in self.records],
            self.image_size,
            cache_dir=cache_dir,
            average_image=self.average_image,
            progress=progress,
        )


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
