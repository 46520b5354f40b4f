"""Batches: MATLAB-style resize + mean subtraction, CHW float32, A/B pairing (the store: test_data_store.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cqd_port.data.batches import ImageFolderDataset, paired_records, read_image_rgb
from cqd_port.data.records import DatasetIndex, ImageRecord
from cqd_port.errors import CqdError
from cqd_port.imresize import imresize


def _write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(5):
        image = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
        _write(tmp_path / "images" / f"{i}.png", image)  # PNG: lossless, so the test knows every pixel
        records.append(ImageRecord(f"images/{i}.png", i % 2, None, True, i + 1))
    return DatasetIndex(tmp_path, "toy", ["a", "b"], records)


def test_item_is_matlab_resize_minus_average(folder):
    average = np.array([120.5, 110.25, 100.0], np.float32).reshape(1, 1, 3)
    dataset = ImageFolderDataset(folder, folder.records, (24, 20), average)
    tensor, label, position = dataset[3]
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 24, 20)
    assert (label, position) == (1, 3)
    rgb = cv2.cvtColor(cv2.imread(str(folder.resolve(folder.records[3]))), cv2.COLOR_BGR2RGB)
    expected = imresize(rgb.astype(np.float32), size=(24, 20), method="bicubic") - average
    np.testing.assert_allclose(tensor.numpy(), expected.transpose(2, 0, 1), rtol=0, atol=1e-4)


def test_resize_on_floats_keeps_bicubic_overshoot(tmp_path):
    # MATLAB imresize on single never clips: a 0/255 step enlarged bicubically rings below 0 and above 255.
    step = np.zeros((8, 8, 3), np.uint8)
    step[:, 4:] = 255
    _write(tmp_path / "s.png", step)
    index = DatasetIndex(tmp_path, "s", ["x"], [ImageRecord("s.png", 0, None, True, 1)])
    tensor, _, _ = ImageFolderDataset(index, index.records, (32, 32), np.zeros(3, np.float32))[0]
    assert tensor.min() < -5 and tensor.max() > 260


def test_constant_image_and_full_size_average(tmp_path):
    _write(tmp_path / "g.png", np.full((17, 33), 200, np.uint8))  # grayscale file -> three equal channels
    index = DatasetIndex(tmp_path, "g", ["x"], [ImageRecord("g.png", 0, None, False, 1)])
    average = np.stack([np.full((8, 8), v, np.float32) for v in (10.0, 20.0, 30.0)], axis=2)
    average[0, 0, 0] = 0.0
    tensor, _, _ = ImageFolderDataset(index, index.records, (8, 8), average)[0]
    expected = np.stack([np.full((8, 8), 200.0 - v, np.float32) for v in (10.0, 20.0, 30.0)])
    expected[0, 0, 0] = 200.0
    np.testing.assert_allclose(tensor.numpy(), expected, atol=1e-3)
    assert read_image_rgb(tmp_path / "g.png").shape == (17, 33, 3)


def test_bad_average_and_unreadable_image(folder, tmp_path):
    with pytest.raises(CqdError, match="averageImage"):
        ImageFolderDataset(folder, folder.records, (24, 20), np.zeros((10, 10, 3), np.float32))
    (tmp_path / "images" / "2.png").write_bytes(b"garbage")
    dataset = ImageFolderDataset(folder, folder.records, (24, 20), np.zeros(3, np.float32))
    with pytest.raises(CqdError, match="2.png"):
        dataset[2]


def test_paired_records(tmp_path):
    def index(paths, labels=(0, 1, 0)):
        return DatasetIndex(tmp_path, "x", ["a", "b"], [ImageRecord(p, l, None, i < 2, i + 1) for i, (p, l) in enumerate(zip(paths, labels))])

    a = index(["a.jpg", "b.jpg", "c.jpg"])
    b = index(["a.jpg", "b.jpg", "c.jpg"])
    ra, rb = paired_records(a, b, train=True)
    assert [r.path for r in ra] == [r.path for r in rb] == ["a.jpg", "b.jpg"]
    assert len(paired_records(a, b)[0]) == 3
    with pytest.raises(CqdError, match="differ at image 2"):
        paired_records(a, index(["a.jpg", "x.jpg", "c.jpg"]))
    with pytest.raises(CqdError, match="differ at image 3"):
        paired_records(a, index(["a.jpg", "b.jpg", "c.jpg"], labels=(0, 1, 1)))
    with pytest.raises(CqdError, match="do not pair up"):
        paired_records(a, index(["a.jpg", "b.jpg"], labels=(0, 1)))
