"""Train / validation / test splits.

The paper uses the splits provided with CUB and Stanford Cars (the `train`
flag of each record). The hyper-parameters (T, lambda) were chosen on a
validation set; we carve it as one third of the training set, stratified
per class (each class contributes round(n/3) of its images) with a fixed
seed, so the same seed always gives the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cqd_port.data.records import DatasetIndex, ImageRecord
from cqd_port.errors import CqdError
from cqd_port.matlab import matlab_round
from cqd_port.seeds import check_seed


@dataclass(frozen=True)
class Split:
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]


def provided_split(index: DatasetIndex) -> Split:
    """The dataset's own train/test split, no validation set."""
    return Split(train=index.train_records(), val=[], test=index.test_records())


def validation_split(index: DatasetIndex, fraction: float = 1 / 3, seed: int = 0) -> Split:
    """Hold out `fraction` of each class's training images as validation (deterministic per seed).

    Records keep the dataset's order inside each part.
    """
    if not 0.0 < fraction < 1.0:
        raise CqdError(f"validation fraction {fraction} must lie strictly between 0 and 1")
    train = index.train_records()
    rng = np.random.default_rng(check_seed(seed, "the validation split's seed"))
    by_class: dict[int, list[int]] = {}
    for position, record in enumerate(train):
        by_class.setdefault(record.label, []).append(position)
    held_out: set[int] = set()
    for label in sorted(by_class):
        positions = by_class[label]
        count = matlab_round(len(positions) * fraction)
        if count >= len(positions):  # keep at least one training image per class
            count = len(positions) - 1
        chosen = rng.permutation(len(positions))[:count]
        held_out.update(positions[i] for i in chosen)
    return Split(
        train=[r for i, r in enumerate(train) if i not in held_out],
        val=[r for i, r in enumerate(train) if i in held_out],
        test=index.test_records(),
    )
