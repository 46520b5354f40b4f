"""Train/validation/test splits: provided split kept, validation deterministic and stratified."""

from __future__ import annotations

import pytest

from cqd_port.data.records import DatasetIndex, ImageRecord
from cqd_port.data.splits import provided_split, validation_split
from cqd_port.errors import CqdError


def _index() -> DatasetIndex:
    records = []
    for label, count in enumerate((9, 6, 3, 1)):
        for k in range(count):
            records.append(ImageRecord(f"images/c{label}/{k}.jpg", label, None, True, len(records) + 1))
        records.append(ImageRecord(f"images/c{label}/test.jpg", label, None, False, len(records) + 1))
    return DatasetIndex("/data", "toy", ["a", "b", "c", "d"], records)


def test_provided_split():
    split = provided_split(_index())
    assert len(split.train) == 19 and len(split.test) == 4 and split.val == []


def test_validation_split_is_stratified_deterministic_and_disjoint():
    index = _index()
    one = validation_split(index, seed=3)
    again = validation_split(index, seed=3)
    other = validation_split(index, seed=4)
    assert one == again
    assert one.val != other.val
    per_class = {label: sum(1 for r in one.val if r.label == label) for label in range(4)}
    assert per_class == {0: 3, 1: 2, 2: 1, 3: 0}  # one third of 9, 6, 3; a single image stays in training
    assert not {r.path for r in one.val} & {r.path for r in one.train}
    assert sorted(r.image_id for r in one.val + one.train) == sorted(r.image_id for r in index.train_records())
    assert one.test == index.test_records()
    # order inside each part follows the dataset's order
    assert [r.image_id for r in one.train] == sorted(r.image_id for r in one.train)


def test_validation_fraction_checked():
    with pytest.raises(CqdError, match="fraction"):
        validation_split(_index(), fraction=1.0)
