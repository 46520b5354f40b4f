"""The real MatConvNet files of ../shared/real-models: each converts and does its job, or is refused
naming what it cannot convert; `.mat` -> `.pt` -> `.mat` -> `.pt` round trips; `export-mat`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from cqd_port.errors import CqdError
from matconvnet_weights.convert import convert_weights, layer_table, load_checkpoint, load_model
from matconvnet_weights.export import export_mat
from matconvnet_weights.read import read_network

# file -> (input C x H x W shown by inspect, output of the last layer, layers after dropping losses)
CONVERTIBLE = {
    "brando_textsmall_net-epoch-20.mat": ((1, 64, 64), (1, 64, 64), 5),
    "dcfnet_epoch-50.mat": ((3, 125, 125), (32, 125, 125), 4),
    "dcfnet_net-7-125-2.mat": ((3, 125, 125), (32, 125, 125), 4),
    "oneclick_net-epoch-50.mat": ((1, 20, 20), (65, 1, 1), 7),
    "player_net_stage_2.mat": ((3, 32, 14), (2, 1, 1), 9),
    "dncnn_sigma25.mat": ((1, 224, 224), (1, 224, 224), 33),
    "lapsrn_x2.mat": ((1, 224, 224), (1, 448, 448), 27),
}
REFUSED = {"ffdnet_gray.mat": "'layer1' (SubP), 'layer2' (concat), 'layer45' (SubP)"}
PARITY_NETWORKS = ("net_vggm_tiny.mat", "net_vggm_tiny_dag.mat", "net_vggm_tiny_oldformat.mat",
                   "net_vggm_tiny_flat.mat", "net_vggvd16_tiny.mat")


def test_the_folder_holds_exactly_the_files_listed(real_models_dir: Path) -> None:
    assert sorted(p.name for p in real_models_dir.glob("*.mat")) == sorted([*CONVERTIBLE, *REFUSED])


@pytest.mark.parametrize("name", list(CONVERTIBLE))
def test_convertible_real_files(real_models_dir: Path, tmp_path: Path, name: str) -> None:
    shape_in, shape_out, count = CONVERTIBLE[name]
    network = read_network(real_models_dir / name)
    table = layer_table(network)
    assert table.input_shape == shape_in
    assert table.rows[-1].output_shape == shape_out
    assert len(network.specs) == count
    out = convert_weights(real_models_dir / name, tmp_path / "model.pt")
    model = load_model(out)
    # fully convolutional nets (no declared size: 224 assumed) run on a small image to stay fast
    size = shape_in[1:] if shape_in[1] * shape_in[2] <= 128 * 128 else (40, 40)
    with torch.no_grad():
        y = model(torch.zeros(1, shape_in[0], *size))
    assert tuple(y.shape[1:]) == layer_table(network, image_size=size).rows[-1].output_shape


def test_trailing_loss_layers_of_any_kind_are_dropped_with_a_note(real_models_dir: Path) -> None:
    custom = read_network(real_models_dir / "brando_textsmall_net-epoch-20.mat")
    assert custom.meta["dropped_layers"] == [{"name": "loss", "type": "custom"}]
    lapsrn = read_network(real_models_dir / "lapsrn_x2.mat")
    assert lapsrn.meta["dropped_layers"] == [{"name": "level1_L1_loss", "type": "dagnn.vllab_dag_loss"}]
    assert any("dropped the trailing loss layer" in note for note in lapsrn.meta["notes"])


def test_unknown_layers_are_shown_then_refused_naming_each(real_models_dir: Path, tmp_path: Path, cli) -> None:
    shown = cli("inspect", real_models_dir / "ffdnet_gray.mat")
    assert shown.exit_code == 0, shown.stderr
    assert "SubP (unknown)" in shown.stdout and "32 layers" in shown.stdout
    refused = cli("convert-weights", real_models_dir / "ffdnet_gray.mat", "-o", tmp_path / "f.pt")
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert REFUSED["ffdnet_gray.mat"] in refused.stderr and "--cut-at" in refused.stderr
    assert not (tmp_path / "f.pt").exists()


def test_one_channel_input_size_from_meta_input_size(real_models_dir: Path, cli) -> None:
    result = cli("inspect", real_models_dir / "oneclick_net-epoch-50.mat")
    assert result.exit_code == 0, result.stderr
    assert "input 1x20x20 (C x H x W; H x W meta.inputSize)" in result.stdout
    assert "65x1x1" in result.stdout


# ----------------------------------------------------------------------------- doing their job


def _gray_photo(size: int) -> np.ndarray:
    import matplotlib.cbook as cbook
    from PIL import Image

    from cqd_port.data.edges import luminance

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        rgb = np.asarray(Image.open(handle).convert("RGB"))
    return luminance(rgb)[100 : 100 + size, 150 : 150 + size] / 255.0  # a face: skin, hair, edges


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.clip(image, 0, 1) - reference) ** 2)))


def test_lapsrn_upsamples_a_real_photo_better_than_bicubic(real_models_dir: Path) -> None:
    from cqd_port.imresize import imresize

    truth = _gray_photo(128)
    low = imresize(truth, scale=0.5)  # MATLAB's bicubic downscaling, as LapSRN's evaluation
    bicubic = imresize(low, scale=2.0)
    model = load_model(real_models_dir / "lapsrn_x2.mat")
    with torch.no_grad():
        upsampled = model(torch.from_numpy(low.astype(np.float32))[None, None]).numpy()[0, 0]
    inner = (slice(4, -4), slice(4, -4))  # LapSRN's evaluation shaves the border
    gain = _psnr(upsampled[inner], truth[inner]) - _psnr(bicubic[inner], truth[inner])
    assert gain > 1.5, gain  # measured 2.8 dB on this crop


def test_dncnn_denoises_a_real_photo(real_models_dir: Path) -> None:
    clean = _gray_photo(128)
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape) * 25 / 255
    model = load_model(real_models_dir / "dncnn_sigma25.mat")
    with torch.no_grad():
        residual = model(torch.from_numpy(noisy.astype(np.float32))[None, None]).numpy()[0, 0]
    assert _psnr(noisy, clean) < 21.5
    assert _psnr(noisy - residual, clean) > 28.0  # measured 20.9 -> 29.3 dB


# ----------------------------------------------------------------------------- round trips


def _round_trip(source: Path, tmp_path: Path) -> None:
    first = convert_weights(source, tmp_path / "a.pt")
    exported, layout = export_mat(first, tmp_path / "b.mat")
    second = convert_weights(exported, tmp_path / "c.pt")
    a, c = load_checkpoint(first), load_checkpoint(second)
    assert [s.to_dict() for s in a.specs] == [s.to_dict() for s in c.specs]
    assert list(a.state) == list(c.state)
    for key, value in a.state.items():
        assert torch.equal(value, c.state[key]), key
    assert layout == ("dagnn" if a.is_graph else "simplenn")


@pytest.mark.parametrize("name", PARITY_NETWORKS)
def test_parity_networks_round_trip(parity_dir: Path, tmp_path: Path, name: str) -> None:
    _round_trip(parity_dir / name, tmp_path)


@pytest.mark.parametrize("name", list(CONVERTIBLE))
def test_real_networks_round_trip(real_models_dir: Path, tmp_path: Path, name: str) -> None:
    _round_trip(real_models_dir / name, tmp_path)


def test_exported_simplenn_reads_in_formats_layout(parity_dir: Path, tmp_path: Path) -> None:
    out, layout = export_mat(parity_dir / "net_vggm_tiny.mat", tmp_path / "net.mat")
    assert layout == "simplenn"
    mine = scipy.io.loadmat(out, squeeze_me=False, struct_as_record=False)
    theirs = scipy.io.loadmat(parity_dir / "net_vggm_tiny.mat", squeeze_me=False, struct_as_record=False)
    for index in range(theirs["layers"].shape[1]):
        a, b = mine["layers"][0, index][0, 0], theirs["layers"][0, index][0, 0]
        assert a._fieldnames == b._fieldnames, (index, a._fieldnames, b._fieldnames)
        assert str(a.name[0]) == str(b.name[0]) and str(a.type[0]) == str(b.type[0])
        if str(b.type[0]) == "conv":
            for got, ref in zip(a.weights[0], b.weights[0]):
                assert got.shape == ref.shape and np.array_equal(got, ref)
            assert np.array_equal(a.pad, b.pad) and np.array_equal(a.size, b.size)
    meta_a, meta_b = mine["meta"][0, 0], theirs["meta"][0, 0]
    norm_a, norm_b = meta_a.normalization[0, 0], meta_b.normalization[0, 0]
    assert np.array_equal(norm_a.averageImage, norm_b.averageImage)
    assert np.array_equal(norm_a.imageSize, norm_b.imageSize) and str(norm_a.interpolation[0]) == "bilinear"
    assert [str(n[0]) for n in meta_a.classes[0, 0].name[0]] == [str(n[0]) for n in meta_b.classes[0, 0].name[0]]


def test_exported_dagnn_holds_saveobj_fields(real_models_dir: Path, tmp_path: Path) -> None:
    out, layout = export_mat(real_models_dir / "lapsrn_x2.mat", tmp_path / "lapsrn.mat")
    assert layout == "dagnn"
    raw = scipy.io.loadmat(out, squeeze_me=False, struct_as_record=False)
    layers = raw["layers"][0]
    assert layers[0]._fieldnames == ["name", "type", "inputs", "outputs", "params", "block"]
    by_name = {str(layer.name[0]): layer for layer in layers}
    up = by_name["level1_upconv"]
    assert str(up.type[0]) == "dagnn.ConvTranspose"
    assert np.array_equal(up.block[0, 0].crop, [[0, 1, 0, 1]])
    assert [str(v[0]) for v in by_name["level1_output"].inputs[0]] == ["level1_img_up", "level1_residual"]
    params = {str(p.name[0]): p.value for p in raw["params"][0]}
    assert params["level1_upconv_f"].shape == (3, 3, 64, 64)  # FH x FW x K x FD as MatConvNet stores it


def test_export_mat_cli(parity_dir: Path, tmp_path: Path, cli) -> None:
    pt = tmp_path / "m.pt"
    assert cli("convert-weights", parity_dir / "net_vggvd16_tiny.mat", "-o", pt).exit_code == 0
    result = cli("export-mat", pt, "-o", tmp_path / "m.mat")
    assert result.exit_code == 0, result.stderr
    assert f"wrote {tmp_path / 'm.mat'} (simplenn)" in result.stdout
    again = cli("export-mat", pt, "-o", tmp_path / "m.mat")
    assert again.exit_code == 2 and "already exists; pass --force" in again.stderr
    assert cli("export-mat", pt, "-o", tmp_path / "m.mat", "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mat", "m.pt"]


def test_cut_at_keeps_the_network_up_to_a_layer(parity_dir: Path, tmp_path: Path, cli) -> None:
    result = cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", tmp_path / "c.pt", "--cut-at", "relu5")
    assert result.exit_code == 0, result.stderr
    model = load_model(tmp_path / "c.pt")
    assert model.layer_names[-1] == "relu5" and len(model.layer_names) == 14
    missing = cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", tmp_path / "d.pt", "--cut-at", "nope")
    assert missing.exit_code == 2 and "--cut-at nope: no such layer" in missing.stderr


def test_odd_layer_names_get_safe_keys_and_keep_the_original(tmp_path: Path, cli) -> None:
    def cell(*items):
        array = np.empty((1, len(items)), dtype=object)
        for i, item in enumerate(items):
            array[0, i] = item
        return array

    rng = np.random.default_rng(0)
    filters = rng.standard_normal((3, 3, 1, 2)).astype(np.float32)
    layers = cell({"name": "conv.1", "type": "conv", "weights": cell(filters, np.zeros((2, 1), np.float32)), "pad": 1.0},
                  {"name": "relu\x01x", "type": "relu"})
    path = tmp_path / "odd.mat"
    scipy.io.savemat(path, {"layers": layers})
    network = read_network(path)
    assert [s.name for s in network.specs] == ["conv_1", "relu_x"]
    assert [s.attrs.get("matconvnet_name") for s in network.specs] == ["conv.1", "relu\x01x"]
    assert list(network.state) == ["conv_1.weight", "conv_1.bias"]
    shown = cli("inspect", path)
    assert shown.exit_code == 0 and "conv.1" in shown.stdout and "relu\\x01x" in shown.stdout
    out, _ = export_mat(path, tmp_path / "back.mat")  # the original names go back to MATLAB
    raw = scipy.io.loadmat(out, squeeze_me=False, struct_as_record=False)
    assert [str(layer[0, 0].name[0]) for layer in raw["layers"][0]] == ["conv.1", "relu\x01x"]


def test_export_refuses_unknown_layers(real_models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CqdError, match="'layer1' \\(SubP\\)"):
        export_mat(real_models_dir / "ffdnet_gray.mat", tmp_path / "f.mat")
    assert not (tmp_path / "f.mat").exists()
