"""`cqd-port v7-copy`: a MAT v7 copy of a model file that Octave and MatConvNet 1.0-beta18 can load (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from matconvnet_weights.convert import load_model
from matconvnet_weights.matfile import HDF5_SIGNATURE, load_mat
from matconvnet_weights.read import read_network

EXPORT_REFERENCE = Path(__file__).resolve().parents[1] / "parity" / "matconvnet" / "export_reference.m"


def test_a_v73_simplenn_file_gets_a_v7_copy_with_the_same_network(real_models_dir: Path, tmp_path: Path, cli) -> None:
    source = real_models_dir / "dncnn_sigma25.mat"
    assert HDF5_SIGNATURE in source.read_bytes()[:1024]  # v7.3: HDF5 after MATLAB's 512-byte header
    result = cli("v7-copy", source, "-o", tmp_path / "dncnn_v7.mat")
    assert result.exit_code == 0, result.stderr + result.stdout
    assert "wrote" in result.stdout and not list(tmp_path.glob(".*tmp*"))
    # what Octave's load reads: a v5-container file whose net.layers is a cell of structs
    layers = _read(tmp_path / "dncnn_v7.mat")["net"]["layers"][0, 0]
    assert layers.dtype.names is None and layers.shape == (1, len(load_mat(source)["net"]["layers"]))  # a cell
    original, copy = load_model(source), load_model(tmp_path / "dncnn_v7.mat")
    assert [(s.name, s.type, s.attrs) for s in copy.specs] == [(s.name, s.type, s.attrs) for s in original.specs]
    for key, value in original.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key
    # refused without --force, one line, exit code 2
    again = cli("v7-copy", source, "-o", tmp_path / "dncnn_v7.mat")
    assert again.exit_code == 2 and "--force" in again.stderr


def test_a_dagnn_copy_for_beta18_has_no_dilate_and_a_real_dilation_is_refused(real_models_dir: Path, tmp_path: Path, cli) -> None:
    from cqd_port_parity.mat_v7 import _to_savemat, write_v7_copy

    source = real_models_dir / "lapsrn_x2.mat"
    written = write_v7_copy(source, tmp_path / "lapsrn_v7.mat")
    layers = _read(written.path)["net"]["layers"][0, 0]
    assert layers.dtype.names is not None  # a struct array, as dagnn.DagNN.loadobj indexes it
    assert _conv_block_fields(layers) and all("dilate" not in fields for fields in _conv_block_fields(layers))
    assert [s.attrs for s in read_network(written.path).specs] == [s.attrs for s in read_network(source).specs]
    kept = write_v7_copy(source, tmp_path / "lapsrn_later.mat", keep_dilate=True)
    assert all("dilate" in fields for fields in _conv_block_fields(_read(kept.path)["net"]["layers"][0, 0]))

    # a dagnn.Conv that really dilates cannot run on beta18
    data = load_mat(kept.path)
    first_conv = next(layer for layer in data["net"]["layers"] if layer["type"] == "dagnn.Conv")
    dilate = np.array([[2.0, 2.0]])
    first_conv["block"]["dilate"] = dilate
    scipy.io.savemat(tmp_path / "dilated.mat", {"net": _to_savemat(data["net"], "net", [], dag_top=True)})
    result = cli("v7-copy", tmp_path / "dilated.mat", "-o", tmp_path / "out.mat")
    assert result.exit_code == 2 and "dilate [2.0, 2.0]" in result.stderr and "--keep-dilate" in result.stderr
    assert not (tmp_path / "out.mat").exists()


def test_export_reference_converts_nothing_itself_but_names_the_fix_and_drops_unit_dilate() -> None:
    script = EXPORT_REFERENCE.read_text()
    load = script.index("stored = load(modelPath);")
    loadobj = script.index("dagnn.DagNN.loadobj(stored)")
    assert "cqd-port v7-copy" in script[load:loadobj]  # a v7.3 file under Octave: the message says what to run
    assert "stored = dropUnitDilate(stored);" in script[load:loadobj]
    helper = script[script.index("function stored = dropUnitDilate(stored)"):]
    assert "properties('dagnn.Conv')" in helper and "rmfield(block, 'dilate')" in helper


def test_export_mat_writes_dilate_into_dagnn_conv_blocks_only_when_it_dilates(real_models_dir: Path, tmp_path: Path, cli) -> None:
    result = cli("export-mat", real_models_dir / "lapsrn_x2.mat", "-o", tmp_path / "dag.mat")  # a graph: DagNN
    assert result.exit_code == 0, result.stderr
    fields = _conv_block_fields(_read(tmp_path / "dag.mat")["layers"])
    assert fields and all("dilate" not in f for f in fields)


def _read(path: Path) -> dict:
    """As Octave/MATLAB see the file: struct arrays as record arrays, cells as object arrays."""
    return scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)


def _conv_block_fields(layers) -> list[tuple[str, ...]]:
    """The block field names of every dagnn.Conv of a DagNN layers struct array."""
    return [layers["block"][0, i].dtype.names for i in range(layers.shape[1]) if str(layers["type"][0, i][0]) == "dagnn.Conv"]
