"""Seeds: one range (0 .. 2**32 - 1) checked where a user's seed is consumed, one line naming where it came from."""

from __future__ import annotations

import numpy as np
import pytest

from cqd_port.errors import CqdError
from cqd_port.seeds import SEED_MAX, check_seed

BAD = [-1, 10**20, SEED_MAX + 1, 1.5, float("nan"), "7", True, None]


@pytest.mark.parametrize("seed", BAD)
def test_check_seed_refuses_what_numpy_or_torch_would_crash_on(seed):
    with pytest.raises(CqdError, match=r"out of range \(train.seed") as info:
        check_seed(seed)
    assert "\n" not in str(info.value) and "4294967295" in str(info.value)


def test_check_seed_accepts_the_whole_range():
    assert [check_seed(s) for s in (0, 7, SEED_MAX, 3.0, np.int64(5))] == [0, 7, SEED_MAX, 3, 5]


@pytest.mark.parametrize("seed", [-1, 10**20])
def test_seed_consumers_refuse_bad_seeds_in_one_line(seed, tmp_path):
    from cqd_port.data.degrade import DegradationConfig
    from cqd_port.data.imagefolder import _stratified_test
    from cqd_port.models.torchvision_nets import build_torchvision
    from cqd_port.models.vgg import init_state, vgg_m_specs

    with pytest.raises(CqdError, match="out of range"):
        init_state(vgg_m_specs(num_classes=3, width=0.125), seed=seed)
    with pytest.raises(CqdError, match="out of range"):
        build_torchvision("mobilenet_v3_small", 3, None, 32, seed)
    with pytest.raises(CqdError, match="data.split_seed"):
        _stratified_test([0, 0, 1, 1], 0.5, seed)
    with pytest.raises(CqdError, match=r"data.seed in a train config, --seed for prepare"):
        DegradationConfig(seed=seed)


def test_train_config_seed_out_of_range_is_one_line(tmp_path, cli):
    import yaml

    from test_custom_data import make_image_folder
    from test_custom_train import tiny

    folder = make_image_folder(tmp_path / "pets", per_class=4, size=32)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny(folder, tmp_path / "run", seed=10**20)))
    result = cli("train", str(config))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: seed 100000000000000000000 is out of range (train.seed")
