"""Hints below the experiments layer name the interface the user has: the YAML key of `train` and each command's option.

The library does not know which command called it, so a hint names every
place the value comes from (`data.root in a train config, --data-root for
prepare, ...`); the old hints named one command's option only (`--device`,
`--data-root`, `--source`, `--out`), which a `train` user does not have.
"""

from __future__ import annotations

import pytest
import torch

from cqd_port.data.cub import read_cub
from cqd_port.data.degrade import DegradationConfig
from cqd_port.data.prepare import prepare_dataset
from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.errors import CqdError

SMALL = DegradationConfig(out_size=32, lowres_size=8)


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "birds", classes=2, train_per_class=1, test_per_class=1, size=48, seed=1)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_device_hint_names_train_device_and_the_option(monkeypatch):
    from cqd_port.train.device import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CqdError) as info:
        select_device("cuda")
    message = _one_line(info)
    assert "train.device" in message and "--device" in message


def test_dataset_folder_hints_name_data_root_and_each_option(birds, tmp_path):
    for call in (lambda: read_cub(tmp_path / "nowhere"), lambda: read_cub(tmp_path)):
        with pytest.raises(CqdError) as info:
            call()
        message = _one_line(info)
        assert all(key in message for key in ("data.root", "--data-root", "--cub-root"))
    index = read_cub(birds)
    index.records[0] = type(index.records[0])(**{**vars(index.records[0]), "path": "images/missing.jpg"})
    with pytest.raises(CqdError) as info:
        index.check_images_exist()
    assert "data.root in a train config" in _one_line(info)


def test_prepare_hints_name_data_source_and_data_prepared(birds, tmp_path):
    with pytest.raises(CqdError) as info:
        prepare_dataset("cub", "localized", birds, tmp_path, source="box", config=SMALL, progress=False)
    assert "data.source" in _one_line(info) and "--source" in str(info.value)
    prepare_dataset("cub", "gray", birds, tmp_path, config=SMALL, progress=False)
    with pytest.raises(CqdError, match="different settings") as info:
        prepare_dataset("cub", "gray", birds, tmp_path, config=DegradationConfig(out_size=32, lowres_size=8, seed=5), progress=False)
    assert "data.prepared" in _one_line(info) and "--out" in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CqdError, match="is a file") as info:
        prepare_dataset("cub", "gray", birds, tmp_path / "file", config=SMALL, progress=False)
    assert "data.prepared" in _one_line(info)
