"""Networks set up as the released initializeNetwork.m + DagNN.fromSimpleNN did."""

from __future__ import annotations

import pytest
import torch

from cqd_port.errors import CqdError
from cqd_port.experiments.networks import (
    finetune_multipliers,
    finetune_network,
    imagenet_finetune_network,
    imagenet_model_path,
)
from cqd_port.models.vgg import init_state, vgg_m_specs, vgg_vd16_specs
from matconvnet_weights.convert import save_checkpoint


def _imagenet_like(tmp_path, specs_fn=vgg_m_specs, name="imagenet-vgg-m.pt", dropout=0.0):
    specs = specs_fn(num_classes=30, width=0.125, input_size=64, dropout=dropout, softmax=True)
    state = init_state(specs, seed=5, method="xavierimproved")
    for key in state:
        if key.endswith(".bias"):
            state[key] = torch.randn(state[key].shape)  # non-zero biases: they must be kept, not re-initialised
    meta = {"normalization": {"imageSize": [64, 64, 3], "averageImage": torch.tensor([120.0, 110.0, 100.0]).numpy().reshape(1, 1, 3)}}
    path = save_checkpoint(tmp_path / name, specs, state, meta)
    return path, specs, state


def test_layers_through_relu7_dropout_and_new_fc8(tmp_path):
    path, specs, state = _imagenet_like(tmp_path)
    net = imagenet_finetune_network(path, num_classes=7, seed=3)
    names = [s.name for s in net.specs]
    assert "prob" not in names and names[-1] == "fc8"
    assert names[-6:] == ["relu6", "dropout6", "fc7", "relu7", "dropout7", "fc8"]
    dropouts = [s for s in net.specs if s.type == "dropout"]
    assert [d.attrs["rate"] for d in dropouts] == [0.5, 0.5]
    # pretrained parameters through fc7 unchanged, biases included; the old fc8 is gone
    for key, value in state.items():
        if key.startswith("fc8."):
            continue
        assert torch.equal(net.state[key], value), key
    assert net.state["fc8.weight"].shape == (7, state["fc7.weight"].shape[0], 1, 1)
    assert torch.count_nonzero(net.state["fc8.bias"]) == 0
    model = net.build()
    scores = model(torch.zeros(2, 3, 64, 64))
    assert scores.shape[:2] == (2, 7)


def test_fc8_init_statistics_and_seed(tmp_path):
    path, _, _ = _imagenet_like(tmp_path)
    a = imagenet_finetune_network(path, num_classes=200, seed=1)
    b = imagenet_finetune_network(path, num_classes=200, seed=1)
    c = imagenet_finetune_network(path, num_classes=200, seed=2)
    w = a.state["fc8.weight"]
    assert abs(float(w.mean())) < 1e-3
    assert float(w.std()) == pytest.approx(0.01, rel=0.03)
    assert torch.equal(w, b.state["fc8.weight"])
    assert not torch.equal(w, c.state["fc8.weight"])


def test_multipliers_pretrained_one_fc8_released_values(tmp_path):
    path, _, state = _imagenet_like(tmp_path)
    net = imagenet_finetune_network(path, num_classes=5)
    assert net.multipliers["fc8.weight"] == (10.0, 1.0)
    assert net.multipliers["fc8.bias"] == (20.0, 0.0)
    others = {k: v for k, v in net.multipliers.items() if not k.startswith("fc8.")}
    assert set(others) == {k for k in state if not k.startswith("fc8.")}
    assert set(others.values()) == {(1.0, 1.0)}  # biases of pretrained layers too (fromSimpleNN)
    assert finetune_multipliers(net.state) == net.multipliers  # a trained model keeps them (staged, A-CQD)


def test_existing_dropout_not_duplicated(tmp_path):
    path, _, _ = _imagenet_like(tmp_path, dropout=0.5)
    net = imagenet_finetune_network(path, num_classes=4)
    assert sum(s.type == "dropout" for s in net.specs) == 2


def test_vgg_vd16_same_way(tmp_path):
    path, _, state = _imagenet_like(tmp_path, vgg_vd16_specs, "imagenet-vgg-verydeep-16.pt")
    net = imagenet_finetune_network(path, num_classes=6)
    names = [s.name for s in net.specs]
    assert names[0] == "conv1_1" and names[-6:] == ["relu6", "dropout6", "fc7", "relu7", "dropout7", "fc8"]
    assert torch.equal(net.state["conv5_3.weight"], state["conv5_3.weight"])


def test_model_without_relu7_is_refused(tmp_path):
    specs = vgg_m_specs(num_classes=5, width=0.125, input_size=64)
    specs = [s for s in specs if s.name != "relu7"]
    state = init_state(specs)
    with pytest.raises(CqdError, match="relu7"):
        finetune_network(specs, state, {}, 3, source="broken.mat")


def test_missing_imagenet_weights_names_file_and_command(tmp_path):
    with pytest.raises(CqdError, match=r"imagenet-vgg-m\.pt.*convert-weights"):
        imagenet_model_path(tmp_path, "vgg-m")
    (tmp_path / "imagenet-vgg-verydeep-16.mat").write_bytes(b"x")
    assert imagenet_model_path(tmp_path, "vgg-vd-16").name == "imagenet-vgg-verydeep-16.mat"
