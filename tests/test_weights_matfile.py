"""matconvnet_weights.matfile: one plain representation for MAT v5/v7 and v7.3 files."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import scipy.io
from scipy.io.matlab import mat_struct

from cqd_port.errors import CqdError
from matconvnet_weights.matfile import load_mat
from matconvnet_weights.read import read_network

# ----------------------------------------------------------------------------- a MATLAB v7.3 writer
# Written here from MATLAB's documented v7.3 conventions so the reader is checked
# against files it did not produce itself: HDF5 with a 512-byte MATLAB header in the
# userblock, a MATLAB_class attribute on every variable, dimensions reversed, a 1x1
# struct as a group (field order in MATLAB_fields), a struct array as a group of
# object-reference datasets, cells as object-reference datasets into #refs#, char
# arrays as uint16, empty arrays as their dimensions with MATLAB_empty.

_CLASS = {
    np.dtype("float64"): "double", np.dtype("float32"): "single", np.dtype("uint8"): "uint8",
    np.dtype("int8"): "int8", np.dtype("int16"): "int16", np.dtype("int32"): "int32",
    np.dtype("uint16"): "uint16", np.dtype("uint32"): "uint32", np.dtype("int64"): "int64",
    np.dtype("uint64"): "uint64", np.dtype("bool"): "logical",
}


class _V73Writer:
    def __init__(self, handle: h5py.File) -> None:
        self.handle = handle
        self.refs = handle.create_group("#refs#")
        self.count = 0

    def _ref_name(self) -> str:
        self.count += 1
        return f"r{self.count}"

    def write(self, parent: h5py.Group, name: str, value: Any) -> h5py.Group | h5py.Dataset:
        if isinstance(value, mat_struct):
            group = parent.create_group(name)
            self._struct_attrs(group, value._fieldnames)
            for field in value._fieldnames:
                self.write(group, field, getattr(value, field))
            return group
        value = np.asarray(value)
        if value.dtype == object:
            if value.size == 1 and isinstance(value.flat[0], mat_struct):
                return self.write(parent, name, value.flat[0])  # MATLAB writes a 1x1 struct as a group
            if value.size and all(isinstance(v, mat_struct) for v in value.flat):
                return self._struct_array(parent, name, value)
            return self._cell(parent, name, value)
        if value.dtype.kind == "U":
            text = "".join(value.ravel().tolist())
            if not text:
                return self._empty(parent, name, "char", (0, 0))
            codes = np.frombuffer(text.encode("utf-16-le"), dtype="<u2").reshape(1, -1)
            dataset = parent.create_dataset(name, data=codes.T)  # MATLAB 1xN -> HDF5 N x 1
            dataset.attrs["MATLAB_class"] = np.bytes_("char")
            dataset.attrs["MATLAB_int_decode"] = np.int32(2)
            return dataset
        cls = _CLASS[value.dtype]
        if value.size == 0:
            return self._empty(parent, name, cls, value.shape)
        data = value.astype(np.uint8) if cls == "logical" else value
        dataset = parent.create_dataset(name, data=np.ascontiguousarray(data.T))
        dataset.attrs["MATLAB_class"] = np.bytes_(cls)
        return dataset

    def _empty(self, parent, name: str, cls: str, shape: tuple[int, ...]) -> h5py.Dataset:
        dataset = parent.create_dataset(name, data=np.array(shape, dtype=np.uint64))
        dataset.attrs["MATLAB_class"] = np.bytes_(cls)
        dataset.attrs["MATLAB_empty"] = np.uint8(1)
        return dataset

    def _struct_attrs(self, group: h5py.Group, fields: list[str]) -> None:
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        vlen = h5py.vlen_dtype(np.dtype("S1"))
        names = np.empty(len(fields), dtype=object)
        for i, field in enumerate(fields):
            names[i] = np.array(list(field), dtype="S1")
        group.attrs.create("MATLAB_fields", names, dtype=vlen)

    def _refs_of(self, values: np.ndarray) -> np.ndarray:
        refs = np.empty(values.shape[::-1], dtype=h5py.ref_dtype)
        # MATLAB's column-major element order is HDF5's row-major order of the reversed shape
        flat = refs.reshape(-1)
        for i, element in enumerate(values.ravel(order="F")):
            flat[i] = self.write(self.refs, self._ref_name(), element).ref
        return refs

    def _cell(self, parent, name: str, value: np.ndarray) -> h5py.Dataset:
        if value.size == 0:
            return self._empty(parent, name, "cell", value.shape)
        dataset = parent.create_dataset(name, data=self._refs_of(value), dtype=h5py.ref_dtype)
        dataset.attrs["MATLAB_class"] = np.bytes_("cell")
        return dataset

    def _struct_array(self, parent, name: str, value: np.ndarray) -> h5py.Group:
        group = parent.create_group(name)
        fields = list(value.flat[0]._fieldnames)
        self._struct_attrs(group, fields)
        for field in fields:
            column = np.empty(value.shape, dtype=object)
            for index in np.ndindex(value.shape):
                column[index] = getattr(value[index], field)
            group.create_dataset(field, data=self._refs_of(column), dtype=h5py.ref_dtype)
        return group


def write_v73(path: Path, variables: dict[str, Any]) -> None:
    """Write scipy-loaded MATLAB values (struct_as_record=False) as a MATLAB v7.3 file."""
    with h5py.File(path, "w", userblock_size=512, libver="earliest") as handle:
        writer = _V73Writer(handle)
        for name, value in variables.items():
            writer.write(handle, name, value)
    created = datetime.datetime(2026, 1, 1).strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 .".encode()
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as handle:
        handle.write(header.ljust(512, b"\x00"))


def _v7_variables(path: Path) -> dict[str, Any]:
    raw = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    return {k: v for k, v in raw.items() if not k.startswith("__")}


def assert_same_plain(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: fields {list(a)} vs {list(b)}"
        for key in a:
            assert_same_plain(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} elements"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_plain(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


# ----------------------------------------------------------------------------- v5 / v7


def test_v7_representation_keeps_matlab_dimensions(parity_dir: Path) -> None:
    data = load_mat(parity_dir / "net_vggm_tiny.mat")
    assert list(data) == ["layers", "meta"]
    layers = data["layers"]
    assert isinstance(layers, list) and len(layers) == 21 and all(isinstance(x, dict) for x in layers)
    conv1 = layers[0]
    assert conv1["name"] == "conv1" and conv1["type"] == "conv"
    filters, biases = conv1["weights"]
    assert filters.shape == (7, 7, 3, 12) and filters.dtype == np.float32
    assert biases.shape == (12, 1)  # never squeezed
    assert conv1["pad"].shape == (1, 4) and conv1["opts"] == []
    fc8 = layers[19]["weights"][0]
    assert fc8.shape == (1, 1, 128, 10)  # leading singletons survive (squeeze_me=True would drop them)
    assert layers[7]["pad"].ravel().tolist() == [0, 1, 0, 1]
    meta = data["meta"]
    assert meta["normalization"]["averageImage"].shape == (224, 224, 3)
    assert meta["normalization"]["interpolation"] == "bilinear"
    assert meta["classes"]["name"][0] == "n00001001" and len(meta["classes"]["description"]) == 10


def test_struct_arrays_become_lists_of_dicts(parity_dir: Path) -> None:
    data = load_mat(parity_dir / "net_vggm_tiny_dag.mat")
    assert [layer["type"] for layer in data["layers"][:3]] == ["dagnn.Conv", "dagnn.ReLU", "dagnn.LRN"]
    assert data["layers"][0]["params"] == ["conv1f", "conv1b"]
    assert data["params"][1]["name"] == "conv1b" and data["params"][1]["value"].shape == (12, 1)
    assert data["vars"][0]["name"] == "input"


def test_small_values_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "values.mat"
    cell = np.empty((1, 3), dtype=object)
    cell[0, 0], cell[0, 1], cell[0, 2] = "abc", np.arange(6.0).reshape(2, 3), np.zeros((0, 0))
    scipy.io.savemat(path, {"s": {"a": np.float32(2.5), "t": "hi"}, "c": cell, "m": np.ones((2, 1, 3))})
    data = load_mat(path)
    assert data["s"]["t"] == "hi" and data["s"]["a"].shape == (1, 1) and data["s"]["a"].dtype == np.float32
    assert data["c"][0] == "abc"
    np.testing.assert_array_equal(data["c"][1], np.arange(6.0).reshape(2, 3))
    assert data["c"][2].shape == (0, 0)
    assert data["m"].shape == (2, 1, 3)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"hello world\n" * 40, "not a readable"),
        (np.random.default_rng(0).bytes(4096), "not a readable"),
    ],
    ids=["missing", "empty", "text", "random-bytes"],
)
def test_bad_files_raise_cqd_error_naming_the_file(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "model.mat"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CqdError, match=expected) as info:
        load_mat(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_file_raises_cqd_error(tmp_path: Path, parity_dir: Path) -> None:
    data = (parity_dir / "net_vggm_tiny.mat").read_bytes()
    path = tmp_path / "half.mat"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CqdError, match="truncated or corrupt") as info:
        load_mat(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- v7.3


@pytest.mark.parametrize("name", ["net_vggm_tiny.mat", "net_vggm_tiny_dag.mat", "net_vggm_tiny_oldformat.mat"])
def test_v73_reads_like_v7(tmp_path: Path, parity_dir: Path, name: str) -> None:
    v73 = tmp_path / name
    write_v73(v73, _v7_variables(parity_dir / name))
    assert v73.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    assert_same_plain(load_mat(v73), load_mat(parity_dir / name), name)


def test_v73_network_converts_identically(tmp_path: Path, parity_dir: Path) -> None:
    v73 = tmp_path / "net_v73.mat"
    write_v73(v73, _v7_variables(parity_dir / "net_vggm_tiny_dag.mat"))
    got, want = read_network(v73), read_network(parity_dir / "net_vggm_tiny_dag.mat")
    assert [s.to_dict() for s in got.specs] == [s.to_dict() for s in want.specs]
    assert list(got.state) == list(want.state)
    for key in want.state:
        assert got.state[key].shape == want.state[key].shape
        assert bool((got.state[key] == want.state[key]).all()), key


def test_v73_writer_is_readable_by_mat73(tmp_path: Path, parity_dir: Path) -> None:
    # An independent reader agrees the test file is a MATLAB v7.3 file (it squeezes, so compare values).
    import mat73

    v73 = tmp_path / "net_v73.mat"
    write_v73(v73, _v7_variables(parity_dir / "net_vggm_tiny.mat"))
    other = mat73.loadmat(str(v73), verbose=False)
    ours = load_mat(v73)
    np.testing.assert_array_equal(np.asarray(other["layers"][15]["weights"][0]), ours["layers"][15]["weights"][0])
    # mat73 zips a struct whose fields are equal-length cells into a list of dicts (one reason
    # the project reads v7.3 with its own walker); the names are still the same.
    assert [c["name"] for c in other["meta"]["classes"]] == ours["meta"]["classes"]["name"]


def test_truncated_v73_raises_cqd_error(tmp_path: Path, parity_dir: Path) -> None:
    v73 = tmp_path / "net_v73.mat"
    write_v73(v73, _v7_variables(parity_dir / "net_vggm_tiny.mat"))
    data = v73.read_bytes()
    cut = tmp_path / "cut_v73.mat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CqdError, match="MAT v7.3") as info:
        load_mat(cut)
    assert str(cut) in str(info.value)
