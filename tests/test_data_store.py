"""The tensor store: decoded once, same values as the per-image pipeline, keyed cache, average on the device side."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from cqd_port.data.batches import ImageFolderDataset
from cqd_port.data.records import DatasetIndex, ImageRecord
from cqd_port.data.store import ImageStore, as_image_store, build_store
from cqd_port.errors import CqdError


def _index(tmp_path, sizes) -> DatasetIndex:
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(sizes):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        records.append(ImageRecord(f"images/{i}.png", i % 2, None, True, i + 1))
    return DatasetIndex(tmp_path, "toy", ["a", "b"], records)


@pytest.mark.parametrize("sizes,dtype", [([(16, 12)] * 4, torch.uint8), ([(30, 40), (16, 12), (21, 9), (50, 50)], torch.float32)])
def test_store_batches_equal_the_per_image_pipeline_bit_for_bit(tmp_path, sizes, dtype):
    index = _index(tmp_path, sizes)
    full_average = np.random.default_rng(1).uniform(90, 130, (16, 12, 3)).astype(np.float32)
    for average in (np.array([120.5, 110.25, 100.0], np.float32), full_average):
        dataset = ImageFolderDataset(index, index.records, (16, 12), average)
        store = dataset.to_store()
        assert store.images.dtype == dtype  # uint8 where every file is already the network's size
        inputs, labels = store.batch([3, 0, 2])
        for row, position in enumerate([3, 0, 2]):
            image, label, _ = dataset[position]
            assert torch.equal(inputs[row], image) and int(labels[row]) == label


def test_store_cache_is_keyed_by_sources_and_reused(tmp_path):
    index = _index(tmp_path, [(16, 12)] * 3)
    paths, labels = [r.path for r in index.records], [r.label for r in index.records]
    cache = tmp_path / "store"
    first = build_store(index.root, paths, labels, (16, 12), cache_dir=cache)
    assert len(list(cache.glob("store-*.npy"))) == 1
    decoded = []
    again = build_store(index.root, paths, labels, (16, 12), cache_dir=cache, on_image=decoded.append)
    assert decoded == [] and torch.equal(again.images, first.images) and again.key == first.key  # reused, not decoded
    # a re-prepared file (new content and mtime): new key, rebuilt
    path = index.root / paths[1]
    cv2.imwrite(str(path), np.zeros((16, 12, 3), np.uint8))
    os.utime(path, ns=(1, 1))
    changed = build_store(index.root, paths, labels, (16, 12), cache_dir=cache, on_image=decoded.append)
    assert decoded == [0, 1, 2] and changed.key != first.key and int(changed.images[1].max()) == 0
    # other settings (size): another store
    assert build_store(index.root, paths, labels, (8, 6), cache_dir=cache).images.dtype == torch.float32
    with pytest.raises(CqdError, match="float32"):
        build_store(index.root, paths, labels, (8, 6), dtype="uint8")


def test_concat_subset_and_datasets_become_stores():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2)
    a = ImageStore(images, torch.tensor([0, 1]), np.array([1.0, 2.0, 3.0]))
    b = ImageStore(images.float() + 0.5, torch.tensor([1, 0]), np.array([1.0, 2.0, 3.0]))
    both = ImageStore.concat([a, b])
    assert len(both) == 4 and both.images.dtype == torch.float32 and both.labels.tolist() == [0, 1, 1, 0]
    x, _ = both.batch([1, 2])
    assert torch.equal(x[0], a.batch([1])[0][0]) and torch.equal(x[1], b.batch([0])[0][0])
    assert a.subset([1]).labels.tolist() == [1]

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((3, 2, 2), float(i)), i % 2, 2 - i  # items stored at their own index

    store = as_image_store(Items())
    assert store.labels.tolist() == [0, 1, 0] and store.batch([0])[0].max() == 2.0


def test_stored_average_image_matches_matconvnet_and_the_mean_colour_does_not(parity_dir):
    # ref_vggm_tiny.mat: MatConvNet's input = image - averageImage, with net_vggm_tiny's full 224x224x3 average.
    from cqd_port.experiments.networks import input_normalization
    from matconvnet_weights.read import read_network
    from cqd_port_parity.compare import relative_error
    from cqd_port_parity.references import read_network_reference

    ref = read_network_reference(parity_dir / "ref_vggm_tiny.mat")
    meta = read_network(parity_dir / "net_vggm_tiny.mat").meta
    errors = {}
    for mode in ("stored", "colour"):
        size, average = input_normalization(meta, average=mode)
        store = ImageStore(ref.image.float(), torch.zeros(ref.image.shape[0], dtype=torch.long), average)
        errors[mode] = relative_error(store.batch(torch.arange(ref.image.shape[0]))[0], ref.input)[1]
    assert errors["stored"] <= 1e-6 and errors["colour"] > 1e-3, errors


def _free_space(monkeypatch, free: int) -> None:
    """The disk under every path has `free` bytes left (shutil.disk_usage as fileio asks it)."""
    import shutil as shutil_module

    from cqd_port import fileio

    usage = shutil_module.disk_usage("/")
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: usage._replace(free=free))


def test_store_on_a_nearly_full_disk_is_the_disk_full_line_not_sigbus(tmp_path, monkeypatch):
    from cqd_port.errors import DiskFullError

    index = _index(tmp_path, [(16, 12)] * 3)
    paths, labels = [r.path for r in index.records], [r.label for r in index.records]
    cache = tmp_path / "store"
    _free_space(monkeypatch, 1000)  # the store needs 3 x 3 x 16 x 12 bytes plus its header
    with pytest.raises(DiskFullError, match="disk full") as info:
        build_store(index.root, paths, labels, (16, 12), cache_dir=cache)
    assert "\n" not in str(info.value) and "store-" in str(info.value)
    assert list(cache.iterdir()) == []  # no .store-*.tmp.npy left


def test_store_whose_blocks_cannot_be_reserved_is_the_disk_full_line(tmp_path, monkeypatch):
    """The space check passed, then the disk filled (another writer): the blocks are reserved up front, so ENOSPC, not SIGBUS."""
    import errno

    import cqd_port.data.store as store_module
    from cqd_port.errors import DiskFullError

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "posix_fallocate", no_space)
    index = _index(tmp_path, [(16, 12)] * 2)
    cache = tmp_path / "store"
    with pytest.raises(DiskFullError, match="disk full"):
        build_store(index.root, [r.path for r in index.records], [r.label for r in index.records], (16, 12), cache_dir=cache)
    assert list(cache.iterdir()) == []
