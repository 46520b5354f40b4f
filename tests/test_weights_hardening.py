"""Issue 17, model files: field checks, graph checks, the --cut-at hint, torchvision runs' final.pt."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from cqd_port.errors import CqdError
from matconvnet_weights.convert import convert_weights, load_model
from matconvnet_weights.matfile import load_mat
from matconvnet_weights.read import read_network
from matconvnet_weights.validate import FieldError, field_numbers, integers
from model_corruptions import write_plain


@pytest.mark.parametrize(
    "value, words",
    [(np.array([[np.nan, 1.0]]), "NaN or Inf"), (np.array([[np.inf]]), "NaN or Inf"), ("abc", "the text 'abc'"),
     (scipy.sparse.csc_matrix(np.ones((1, 2))), "sparse"), ({"a": 1}, "a struct"), (np.array([[1 + 2j]]), "complex")],
)
def test_numeric_fields_refuse_what_matconvnet_cannot_use(value, words) -> None:
    with pytest.raises(FieldError, match=words):
        field_numbers(value)


def test_integer_fields_are_integral_and_bounded() -> None:
    assert integers(np.array([[2.0, 3.0]]), minimum=1) == [2, 3]
    for bad in (np.array([[1.5]]), np.array([[0.0]]), np.array([[1e30]])):
        with pytest.raises(FieldError, match="positive integers"):
            integers(bad, minimum=1)


def _tiny(parity_dir: Path) -> dict:
    return load_mat(parity_dir / "net_vggm_tiny.mat")


def test_nan_stride_names_the_file_the_layer_and_the_field(tmp_path: Path, parity_dir: Path) -> None:
    top = _tiny(parity_dir)
    layers = top["layers"]
    conv = next(i for i, layer in enumerate(layers) if layer["type"] == "conv")
    layers[conv]["stride"] = np.array([[np.nan, 1.0]])
    path = write_plain(tmp_path / "nan_stride.mat", top)
    with pytest.raises(CqdError) as info:
        read_network(path)
    message = str(info.value)
    assert str(path) in message and f"layer '{layers[conv]['name']}'" in message and "'stride'" in message
    assert "\n" not in message


def test_pool_method_stored_as_a_number_is_refused(tmp_path: Path, parity_dir: Path) -> None:
    top = _tiny(parity_dir)
    pool = next(layer for layer in top["layers"] if layer["type"] == "pool")
    pool["method"] = np.array([[1.0]])
    with pytest.raises(CqdError, match="pooling 'method' must be the text 'max' or 'avg'"):
        read_network(write_plain(tmp_path / "method.mat", top))


def test_meta_sizes_must_be_positive_integers(tmp_path: Path, parity_dir: Path) -> None:
    for field, value in (("imageSize", np.array([[np.nan, 224.0, 3.0]])), ("keepAspect", "yes")):
        top = _tiny(parity_dir)
        top["meta"]["normalization"][field] = value
        with pytest.raises(CqdError, match=f"meta.normalization.{field}"):
            read_network(write_plain(tmp_path / f"{field}.mat", top))


def _dag(parity_dir: Path) -> dict:
    return load_mat(parity_dir / "net_vggm_tiny_dag.mat")


def test_two_writers_of_one_variable_are_reported_as_such(tmp_path: Path, parity_dir: Path) -> None:
    top = _dag(parity_dir)
    layers = top["layers"]
    layers[3]["outputs"] = layers[2]["outputs"]
    with pytest.raises(CqdError, match=f"written by two layers, '{layers[2]['name']}' and '{layers[3]['name']}'"):
        read_network(write_plain(tmp_path / "writers.mat", top))


def test_a_cycle_names_the_file_and_the_layers(tmp_path: Path, parity_dir: Path) -> None:
    top = _dag(parity_dir)
    layers = top["layers"]
    layers[1]["inputs"] = layers[4]["outputs"]
    path = write_plain(tmp_path / "cycle.mat", top)
    with pytest.raises(CqdError) as info:
        read_network(path)
    names = {layer["name"] for layer in layers}
    message = str(info.value)
    assert str(path) in message and "cycle through layers" in message
    assert sum(f"'{name}'" in message for name in names) == 2


def test_a_layer_reading_a_variable_nothing_writes_is_refused(tmp_path: Path, parity_dir: Path) -> None:
    top = _dag(parity_dir)
    top["layers"][5]["inputs"] = ["nowhere"]
    with pytest.raises(CqdError, match="reads variable 'nowhere', which no layer writes"):
        read_network(write_plain(tmp_path / "dangling.mat", top))
    top = _dag(parity_dir)
    top["layers"][5]["inputs"] = [["x0"]]
    with pytest.raises(CqdError, match="'inputs' must be a cell of variable names"):
        read_network(write_plain(tmp_path / "nested.mat", top))


def test_cut_at_hint_names_a_layer_that_works(tmp_path: Path, parity_dir: Path, real_models_dir: Path) -> None:
    # ffdnet's first layer is unknown: no --cut-at can help, and the message says so
    with pytest.raises(CqdError) as info:
        convert_weights(real_models_dir / "ffdnet_gray.mat", tmp_path / "f.pt")
    assert "'layer1' is the first layer, so no --cut-at" in str(info.value)
    # an unknown layer in the middle: the hint names the layer before it, and that cut converts
    top = _tiny(parity_dir)
    index = len(top["layers"]) // 2
    top["layers"][index]["type"] = "weird"
    path = write_plain(tmp_path / "weird.mat", top)
    with pytest.raises(CqdError) as info:
        convert_weights(path, tmp_path / "w.pt")
    before = top["layers"][index - 1]["name"]
    assert f"--cut-at {before} keeps the layers up to '{before}'" in str(info.value)
    written = convert_weights(path, tmp_path / "w.pt", cut_at_layer=before)
    assert load_model(written).specs[-1].name == before


@pytest.fixture(scope="module")
def torchvision_final(tmp_path_factory) -> Path:
    from cqd_port.models.torchvision_nets import build_torchvision, save_torchvision

    model, _ = build_torchvision("squeezenet1_1", 4, None, 64, 0)
    path = tmp_path_factory.mktemp("tv") / "final.pt"
    save_torchvision(path, model)
    return path


def test_inspect_shows_a_torchvision_run(cli, torchvision_final: Path) -> None:
    result = cli("inspect", torchvision_final)
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())  # the table's title wraps on a narrow table
    assert "squeezenet1_1 (torchvision), 4 classes, input 3x64x64" in text
    assert "features" in text and "layout: torchvision" in text


def test_other_commands_say_torchvision_runs_are_not_theirs(cli, tmp_path: Path, torchvision_final: Path) -> None:
    result = cli("export-mat", torchvision_final, "-o", tmp_path / "net.mat")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "a torchvision run's network (squeezenet1_1)" in lines[0]
    assert not (tmp_path / "net.mat").exists()
    with pytest.raises(CqdError, match="torchvision run's network"):
        load_model(torchvision_final)  # what `analyze gradients` loads
