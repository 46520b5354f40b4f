"""matconvnet_weights readers: the three file layouts -> one layer list and state dict."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch

from cqd_port.errors import CqdError
from matconvnet_weights.convert import convert_weights, layer_table, load_checkpoint, save_checkpoint
from matconvnet_weights.dagnn import read_dagnn
from matconvnet_weights.matfile import load_mat
from matconvnet_weights.read import read_network
from matconvnet_weights.simplenn import read_simplenn

VGGM_LAYOUTS = ("net_vggm_tiny.mat", "net_vggm_tiny_oldformat.mat", "net_vggm_tiny_dag.mat")


@pytest.fixture(scope="module")
def vggm(parity_dir: Path) -> dict[str, Any]:
    return {name: read_network(parity_dir / name) for name in VGGM_LAYOUTS}


def _cell(*items: Any) -> np.ndarray:
    array = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        array[0, i] = item
    return array


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _conv(name: str, h: int, w: int, cin: int, cout: int, seed: int = 0, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "conv", "weights": _cell(_rand(h, w, cin, cout, seed=seed), _rand(cout, 1, seed=seed + 1)), **fields}


def _save_simplenn(path: Path, layers: list[dict[str, Any]], image_size=(8, 8, 3)) -> Path:
    meta = {"normalization": {"imageSize": np.array([image_size], dtype=float), "averageImage": np.zeros((1, 1, 3), np.float32)}}
    scipy.io.savemat(path, {"layers": _cell(*layers), "meta": meta})
    return path


# ----------------------------------------------------------------------------- the real files


def test_three_vggm_layouts_give_identical_networks(vggm: dict[str, Any]) -> None:
    reference = vggm["net_vggm_tiny.mat"]
    assert [n.layout for n in vggm.values()] == ["simplenn", "simplenn-pre-beta17", "dagnn"]
    for name, network in vggm.items():
        assert [s.to_dict() for s in network.specs] == [s.to_dict() for s in reference.specs], name
        assert list(network.state) == list(reference.state), name
        for key, value in reference.state.items():
            assert network.state[key].dtype == torch.float32
            assert torch.equal(network.state[key], value), f"{name}: {key}"
        for key in ("imageSize", "interpolation", "keepAspect", "border", "cropSize"):
            assert network.meta["normalization"][key] == reference.meta["normalization"][key], f"{name}: {key}"
        np.testing.assert_array_equal(
            network.meta["normalization"]["averageImage"], reference.meta["normalization"]["averageImage"]
        )
        assert network.meta["classes"] == reference.meta["classes"], name


def test_vggm_layer_attributes_and_weights_follow_matconvnet(vggm: dict[str, Any], parity_dir: Path) -> None:
    network = vggm["net_vggm_tiny.mat"]
    specs = {s.name: s for s in network.specs}
    assert [s.type for s in network.specs][:8] == ["conv", "relu", "lrn", "pool", "conv", "relu", "lrn", "pool"]
    assert specs["conv1"].attrs == {"pad": [0, 0, 0, 0], "stride": [2, 2], "dilate": [1, 1], "has_bias": True}
    assert specs["pool2"].attrs == {"method": "max", "pool": [3, 3], "pad": [0, 1, 0, 1], "stride": [2, 2]}
    assert specs["norm1"].attrs["param"] == pytest.approx([5, 2, 1e-4, 0.75])
    assert specs["prob"].type == "softmax"
    # independently of cqd_port.layout: OIHW[o, i, y, x] == filters[y, x, i, o]
    raw = scipy.io.loadmat(parity_dir / "net_vggm_tiny.mat", squeeze_me=False, struct_as_record=False)
    fc6 = raw["layers"][0, 15][0, 0].weights[0, 0]
    weight = network.state["fc6.weight"].numpy()
    assert weight.shape == (128, 64, 6, 6)
    assert weight[5, 7, 1, 4] == fc6[1, 4, 7, 5] and weight[127, 63, 5, 0] == fc6[5, 0, 63, 127]
    np.testing.assert_array_equal(network.state["fc6.bias"].numpy(), raw["layers"][0, 15][0, 0].weights[0, 1].ravel())
    meta = network.meta
    assert meta["normalization"]["imageSize"] == [224, 224, 3]
    assert meta["normalization"]["averageImage"].shape == (224, 224, 3)
    assert meta["normalization"]["averageImage"].dtype == np.float32
    assert meta["normalization"]["keepAspect"] is True and meta["normalization"]["border"] == [32.0, 32.0]
    assert len(meta["classes"]["name"]) == 10 and meta["classes"]["description"][0] == "class 1, a test label"
    assert meta["inputs"] == [{"name": "data", "size": [224, 224, 3, 10]}]


def test_dagnn_meta_keeps_variables_and_multipliers(vggm: dict[str, Any]) -> None:
    meta = vggm["net_vggm_tiny_dag.mat"].meta
    assert meta["variables"]["fc8"] == "prediction" and meta["input_variable"] == "input"
    assert meta["param_multipliers"]["conv1.bias"] == {"learningRate": 2.0, "weightDecay": 0.0}


def test_vgg_vd16(parity_dir: Path) -> None:
    network = read_network(parity_dir / "net_vggvd16_tiny.mat")
    assert len(network.specs) == 37 and network.specs[-1].type == "softmax"
    assert network.meta["normalization"]["averageImage"].shape == (1, 1, 3)
    assert network.state["fc6.weight"].shape == (64, 32, 7, 7)


# ----------------------------------------------------------------------------- synthetic layouts


def test_shorthands_and_tidy_defaults(tmp_path: Path) -> None:
    layers = [
        {"name": "c1", "type": "conv", "weights": _cell(_rand(3, 3, 3, 4), np.zeros((0, 0), np.float32)), "pad": 1.0, "stride": 2.0},
        {"name": "r1", "type": "relu"},
        {"name": "n1", "type": "normalize"},
        {"name": "p1", "type": "pool", "pool": 2.0, "pad": np.array([[1.0, 0.0]])},
        {"name": "d1", "type": "dropout"},
        {"name": "loss", "type": "softmaxloss"},
    ]
    network = read_network(_save_simplenn(tmp_path / "short.mat", layers))
    attrs = {s.name: s.attrs for s in network.specs}
    assert attrs["c1"] == {"pad": [1, 1, 1, 1], "stride": [2, 2], "dilate": [1, 1], "has_bias": False}
    assert "c1.bias" not in network.state and network.state["c1.weight"].shape == (4, 3, 3, 3)
    assert attrs["r1"] == {"leak": 0.0}
    assert attrs["n1"]["param"] == pytest.approx([5, 1, 2e-5, 0.75])  # vl_simplenn_tidy's default
    assert attrs["p1"] == {"method": "max", "pool": [2, 2], "pad": [1, 1, 0, 0], "stride": [1, 1]}
    assert attrs["d1"] == {"rate": 0.5}
    assert [s.name for s in network.specs][-1] == "d1"
    assert network.meta["dropped_layers"] == [{"name": "loss", "type": "softmaxloss"}]
    assert "inference" in network.meta["notes"][0]


def test_network_saved_as_one_variable(tmp_path: Path) -> None:
    path = tmp_path / "net.mat"
    scipy.io.savemat(path, {"net": {"layers": _cell(_conv("c", 1, 1, 3, 2)), "meta": {}}, "stats": np.zeros((1, 1))})
    network = read_network(path)
    assert [s.name for s in network.specs] == ["c"]


def test_grouped_convolution_is_checked(tmp_path: Path) -> None:
    ok = [_conv("c1", 1, 1, 3, 4), _conv("c2", 3, 3, 2, 6, seed=2)]  # 4 channels, depth 2: 2 groups
    network = read_network(_save_simplenn(tmp_path / "groups.mat", ok))
    assert network.state["c2.weight"].shape == (6, 2, 3, 3)
    bad = [_conv("c1", 1, 1, 3, 4), _conv("c2", 3, 3, 2, 5, seed=2)]
    with pytest.raises(CqdError, match="layer 'c2': 5 filters cannot be split into 2 groups"):
        read_network(_save_simplenn(tmp_path / "badgroups.mat", bad))


@pytest.mark.parametrize(
    "layers, message",
    [
        ([_conv("c1", 3, 3, 3, 4), {"name": "weird", "type": "SubP"}, {"name": "r", "type": "relu"}], "the port does not know: 'weird' (SubP)"),
        ([_conv("c1", 3, 3, 3, 4), _conv("c2", 3, 3, 3, 4)], "layer 'c2': filter depth 3 does not divide the 4 input channels"),
        ([{"name": "c1", "type": "conv", "weights": _cell(_rand(3, 3, 3, 4), _rand(5, 1))}], "layer 'c1': has 5 biases for 4 filters"),
        ([{"name": "p", "type": "pool", "pool": 2.0, "method": "median"}], "layer 'p': pooling method 'median'"),
        ([{"name": "l", "type": "loss"}, {"name": "r", "type": "relu"}], "the port does not know: 'l' (loss)"),
        ([_conv("c1", 3, 3, 3, 4), _conv("c1", 1, 1, 4, 4)], "layer 'c1': the name is used by two layers"),
    ],
    ids=["unknown-type", "filter-depth", "bias-length", "pool-method", "loss-in-middle", "duplicate-name"],
)
def test_bad_networks_raise_cqd_error_naming_file_and_layer(tmp_path: Path, layers: list, message: str) -> None:
    path = _save_simplenn(tmp_path / "bad.mat", layers)
    with pytest.raises(CqdError) as info:
        convert_weights(path, tmp_path / "out.pt")  # reading keeps unknown layers (inspect shows them)
    assert not (tmp_path / "out.pt").exists()
    assert message in str(info.value) and str(path) in str(info.value)


def test_file_without_a_network(tmp_path: Path) -> None:
    path = tmp_path / "data.mat"
    scipy.io.savemat(path, {"images": np.zeros((2, 2))})
    with pytest.raises(CqdError, match="holds no MatConvNet network .*found: images"):
        read_network(path)


# ----------------------------------------------------------------------------- DagNN structure


def _dag(parity_dir: Path) -> dict[str, Any]:
    return load_mat(parity_dir / "net_vggm_tiny_dag.mat")


def test_dagnn_layers_out_of_order_are_chained(parity_dir: Path, vggm: dict[str, Any]) -> None:
    top = _dag(parity_dir)
    top["layers"] = top["layers"][::-1]
    network = read_dagnn(top, parity_dir / "shuffled.mat")
    assert [s.name for s in network.specs] == [s.name for s in vggm["net_vggm_tiny.mat"].specs]


def test_dagnn_trailing_loss_is_dropped(parity_dir: Path) -> None:
    top = _dag(parity_dir)
    top["layers"] = top["layers"][:-1] + [
        {"name": "objective", "type": "dagnn.Loss", "inputs": ["prediction", "label"], "outputs": ["objective"], "params": [], "block": {}}
    ]
    network = read_dagnn(top, parity_dir / "x.mat")
    assert network.specs[-1].name == "fc8"
    assert network.meta["dropped_layers"] == [{"name": "objective", "type": "dagnn.Loss"}]


def test_dagnn_branch_makes_a_graph(parity_dir: Path) -> None:
    top = _dag(parity_dir)
    branch = copy.deepcopy(top["layers"][1])
    branch.update(name="relu1b", outputs=["x1b"])
    top["layers"].append(branch)  # x1 is now read by relu1 and relu1b
    network = read_dagnn(top, parity_dir / "branch.mat")
    assert network.is_graph
    relu1b = next(s for s in network.specs if s.name == "relu1b")
    assert relu1b.attrs["inputs"] == ["x1"] and relu1b.attrs["outputs"] == ["x1b"]


def test_dagnn_two_input_layer_makes_a_graph(parity_dir: Path) -> None:
    # pool1's output concatenated with itself (24 channels) feeds conv2, whose filters are made 24 deep
    top = _dag(parity_dir)
    cat = {"name": "cat", "type": "dagnn.Concat", "inputs": ["x4", "x4"], "outputs": ["x4c"], "params": [], "block": {"dim": 3}}
    top["layers"].insert(4, cat)
    top["layers"][5]["inputs"] = ["x4c"]
    conv2 = next(p for p in top["params"] if p["name"] == top["layers"][5]["params"][0])
    conv2["value"] = np.concatenate([conv2["value"], conv2["value"]], axis=2)
    network = read_dagnn(top, parity_dir / "concat.mat")
    concat = next(s for s in network.specs if s.type == "concat")
    assert concat.attrs["inputs"] == ["x4", "x4"] and concat.attrs["dim"] == 3


def test_dagnn_concat_whose_channels_do_not_fit_the_next_layer_is_refused(parity_dir: Path) -> None:
    # conv2 replaced by a Concat of x4 and x2 (24 channels): conv3's 32-deep filters cannot read it
    top = _dag(parity_dir)
    top["layers"][4]["inputs"] = ["x4", "x2"]
    top["layers"][4]["type"] = "dagnn.Concat"
    with pytest.raises(CqdError, match="layer 'conv3': filter depth 32 does not divide the 24 input channels"):
        read_dagnn(top, parity_dir / "concat.mat")


def test_dagnn_unknown_type_is_kept_then_refused_by_conversion(parity_dir: Path) -> None:
    from matconvnet_weights.convert import check_convertible

    top = _dag(parity_dir)
    top["layers"][1]["type"] = "dagnn.Sigmoid"
    network = read_dagnn(top, parity_dir / "sigmoid.mat")
    assert [(s.name, s.attrs["matconvnet_type"]) for s in network.unknown_layers()] == [("relu1", "dagnn.Sigmoid")]
    with pytest.raises(CqdError, match="sigmoid.mat: cannot convert .*'relu1' \\(dagnn.Sigmoid\\)"):
        check_convertible(network, parity_dir / "sigmoid.mat")


def test_simplenn_plain_tree_unknown_type_in_real_file(parity_dir: Path) -> None:
    from matconvnet_weights.convert import check_convertible

    top = load_mat(parity_dir / "net_vggm_tiny.mat")
    top["layers"][2]["type"] = "spnorm"
    network = read_simplenn(top, parity_dir / "net_vggm_tiny.mat")
    assert network.specs[2].type == "unknown" and len(network.specs) == 21  # prob included
    with pytest.raises(CqdError, match="'norm1' \\(spnorm\\)"):
        check_convertible(network, "x")


# ----------------------------------------------------------------------------- checkpoints and table


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path, vggm: dict[str, Any]) -> None:
    network = vggm["net_vggm_tiny_dag.mat"]
    path = save_checkpoint(tmp_path / "net.pt", network.specs, network.state, network.meta)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "cqd-port-checkpoint/1"
    assert isinstance(payload["meta"]["normalization"]["averageImage"], torch.Tensor)
    assert payload["layers"][7] == {"name": "pool2", "type": "pool", "attrs": {"method": "max", "pool": [3, 3], "pad": [0, 1, 0, 1], "stride": [2, 2]}}
    loaded = load_checkpoint(path)
    assert [s.to_dict() for s in loaded.specs] == [s.to_dict() for s in network.specs]
    assert all(torch.equal(loaded.state[k], v) for k, v in network.state.items())
    np.testing.assert_array_equal(loaded.meta["normalization"]["averageImage"], network.meta["normalization"]["averageImage"])
    assert loaded.meta["param_multipliers"] == network.meta["param_multipliers"]
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]  # no temporary file left behind


def test_load_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CqdError, match="not a cqd-port checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["net_vggm_tiny.mat", "net_vggvd16_tiny.mat"])
def test_layer_table_matches_a_forward_pass(parity_dir: Path, name: str) -> None:
    from matconvnet_weights.convert import load_model

    network = read_network(parity_dir / name)
    table = layer_table(network)
    model = load_model(parity_dir / name)
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 224, 224), return_all=True)
    assert [r.name for r in table.rows] == list(outputs)
    for row in table.rows:
        assert row.output_shape == tuple(outputs[row.name].shape[1:]), row.name
    raw = load_mat(parity_dir / name)
    expected = sum(w.size for layer in raw["layers"] for w in layer.get("weights", []))
    assert table.total_params == expected


def test_layer_table_rejects_too_small_images(vggm: dict[str, Any]) -> None:
    with pytest.raises(CqdError, match="layer 'fc6' \\(conv\\): its 2x2 input is smaller than its 6x6 window"):
        layer_table(vggm["net_vggm_tiny.mat"], image_size=(100, 100))


def test_topology_check(tmp_path: Path, parity_dir: Path) -> None:
    out = convert_weights(parity_dir / "net_vggvd16_tiny.mat", tmp_path / "vd16.pt", expect="vgg-vd-16")
    assert out.exists()
    with pytest.raises(CqdError, match="net_vggm_tiny.mat: topology check failed: not a vgg-vd-16 network"):
        convert_weights(parity_dir / "net_vggm_tiny.mat", tmp_path / "m.pt", expect="vgg-vd-16")
    with pytest.raises(CqdError, match="unknown model 'alexnet' for --model"):
        convert_weights(parity_dir / "net_vggm_tiny.mat", tmp_path / "m.pt", expect="alexnet")
    assert not (tmp_path / "m.pt").exists()


def test_bnorm_and_dilation(tmp_path: Path) -> None:
    from matconvnet_weights.convert import load_model

    gain, bias = _rand(4, 1, seed=3), _rand(4, 1, seed=4)
    moments = np.stack([_rand(4, seed=5), 1.0 + np.abs(_rand(4, seed=6))], axis=1)  # C x 2 [mean sigma]
    layers = [
        _conv("c1", 3, 3, 3, 4, dilate=np.array([[2.0, 1.0]])),
        {"name": "bn1", "type": "bnorm", "weights": _cell(gain, bias, moments), "epsilon": 1e-3},
    ]
    path = _save_simplenn(tmp_path / "bn.mat", layers, image_size=(9, 9, 3))
    network = read_network(path)
    assert network.specs[0].attrs["dilate"] == [2, 1]
    assert network.specs[1].attrs == {"epsilon": 1e-3}
    np.testing.assert_array_equal(network.state["bn1.moments"].numpy(), moments)
    np.testing.assert_array_equal(network.state["bn1.weight"].numpy(), gain.ravel())
    assert layer_table(network).rows[0].output_shape == (4, 5, 7)  # 9 - 2*(3-1) = 5 rows, 9 - 2 = 7 columns
    model = load_model(path)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        out = model(x, return_all=True)
    mean, sigma = torch.from_numpy(moments[:, 0]), torch.from_numpy(moments[:, 1])
    expected = torch.from_numpy(gain.ravel()).view(1, 4, 1, 1) * (out["c1"] - mean.view(1, 4, 1, 1)) / sigma.view(1, 4, 1, 1)
    expected = expected + torch.from_numpy(bias.ravel()).view(1, 4, 1, 1)
    assert out["c1"].shape == (1, 4, 5, 7)
    torch.testing.assert_close(out["bn1"], expected)
    bad = [_conv("c1", 3, 3, 3, 4), {"name": "bn1", "type": "bnorm", "weights": _cell(gain, bias, moments[:3])}]
    with pytest.raises(CqdError, match="layer 'bn1': moments have shape \\(3, 2\\); expected 4 x 2"):
        read_network(_save_simplenn(tmp_path / "badbn.mat", bad))


def test_dagnn_batchnorm_and_conv_without_bias(parity_dir: Path) -> None:
    top = _dag(parity_dir)
    top["layers"][0]["block"]["hasBias"] = np.zeros((1, 1), np.uint8)
    top["layers"][0]["params"] = ["conv1f"]
    moments = np.stack([np.arange(12, dtype=np.float32), np.ones(12, np.float32)], axis=1)
    top["params"] += [
        {"name": "bn1m", "value": np.full((12, 1), 2.0, np.float32), "learningRate": np.array([[2.0]]), "weightDecay": np.array([[0.0]])},
        {"name": "bn1b", "value": np.zeros((12, 1), np.float32), "learningRate": np.array([[1.0]]), "weightDecay": np.array([[0.0]])},
        {"name": "bn1x", "value": moments, "learningRate": np.array([[0.05]]), "weightDecay": np.array([[0.0]])},
    ]
    top["layers"][1]["inputs"] = ["bn1out"]
    top["layers"].insert(1, {"name": "bn1", "type": "dagnn.BatchNorm", "inputs": ["x1"], "outputs": ["bn1out"],
                             "params": ["bn1m", "bn1b", "bn1x"], "block": {"numChannels": np.array([[12.0]]), "epsilon": np.array([[1e-4]])}})
    network = read_dagnn(top, parity_dir / "bn.mat")
    assert [s.name for s in network.specs][:3] == ["conv1", "bn1", "relu1"]
    assert network.specs[0].attrs["has_bias"] is False and "conv1.bias" not in network.state
    assert "conv1.bias" not in network.meta["param_multipliers"]
    np.testing.assert_array_equal(network.state["bn1.moments"].numpy(), moments)
    assert network.meta["param_multipliers"]["bn1.moments"]["learningRate"] == pytest.approx(0.05)
    assert network.specs[1].attrs == {"epsilon": 1e-4}


def test_checkpoint_meta_with_numpy_values_loads_weights_only(tmp_path: Path, vggm: dict[str, Any]) -> None:
    network = vggm["net_vggm_tiny.mat"]
    meta = dict(network.meta, extra={"epoch": np.int64(3), "size": (224, 224), "mean": np.array([1.5, 2.5])})
    path = save_checkpoint(tmp_path / "net.pt", network.specs, network.state, meta)
    payload = torch.load(path, weights_only=True)
    assert payload["meta"]["extra"] == {"epoch": 3, "size": [224, 224], "mean": [1.5, 2.5]}
    assert payload["meta"]["normalization"]["averageImage"].dtype == torch.float32
