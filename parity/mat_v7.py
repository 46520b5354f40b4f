"""A MAT v7 copy of a MatConvNet model file, for MatConvNet 1.0-beta18 under Octave (`cqd-port v7-copy`).

`export_reference.m` writes the parity references with MatConvNet itself,
often under GNU Octave, which cannot read MAT v7.3 (HDF5) files: `load`
then returns a struct without `layers` ("structure has no member 'layers'").
`write_v7_copy` reads any model file with the project's reader
(`matconvnet_weights.matfile.load_mat`, v4 to v7.3) and writes every
variable again with `scipy.io.savemat` (MAT v5 compressed, what MATLAB's
`-v7` writes), atomically (`cqd_port.fileio.atomic_path`).

What the reader's plain representation does not keep is restored by rule:

- a DagNN file's top-level `vars`, `params` and `layers` are struct arrays
  (`dagnn.DagNN.loadobj` indexes them with `()`); every other list is a
  1 x N cell (SimpleNN's `layers{i}`, `weights = {filters, biases}`);
- values with no plain form (function handles, class objects, e.g. a
  `custom` loss layer's `forward`) are written as `[]` and named in the notes.

For beta18 (the default) the `dilate` field of DagNN `dagnn.Conv` blocks is
left out: beta18's `dagnn.Conv` has no such property, so `loadobj` fails on
files saved by later MatConvNet versions (LapSRN's). A dilation other than 1
cannot run on beta18 and is refused; `keep_dilate=True` writes it as stored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_path

DAGNN_STRUCT_ARRAYS = ("vars", "params", "layers")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class V7Copy:
    """What `write_v7_copy` wrote: the output file, its variables, and what it had to change."""

    path: Path
    variables: list[str]
    notes: list[str] = field(default_factory=list)


def write_v7_copy(
    source: str | os.PathLike[str], out: str | os.PathLike[str], keep_dilate: bool = False, force: bool = False
) -> V7Copy:
    """Write a MAT v7 copy of the model file `source` to `out` (see the module docstring)."""
    import scipy.io

    from matconvnet_weights.convert import check_output_path
    from matconvnet_weights.matfile import load_mat

    source, out = Path(source), Path(out)
    if out.suffix.lower() != ".mat":
        raise CqdError(f"{out}: a MAT file must end in .mat; choose an output such as net_v7.mat")
    if not source.is_file():
        raise CqdError(f"{source}: no such file; give a MatConvNet model file")
    check_output_path(out, source, force)
    data = load_mat(source)
    notes: list[str] = []
    contents: dict[str, Any] = {}
    for name, value in data.items():
        if not _IDENTIFIER.match(name):
            notes.append(f"variable '{name}' is not a MATLAB name; left out")
            continue
        dag = isinstance(value, dict) and all(k in value for k in DAGNN_STRUCT_ARRAYS)
        if dag and not keep_dilate:
            _drop_unit_dilate(value, source)
        contents[name] = _to_savemat(value, name, notes, dag_top=dag)
    if not contents:
        raise CqdError(f"{source}: holds no variable that can be written; is it a MatConvNet model?")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            scipy.io.savemat(handle, contents, do_compression=True, long_field_names=True)
    return V7Copy(out, list(contents), notes)


def _drop_unit_dilate(net: dict[str, Any], source: Path) -> None:
    """Remove `dilate` from the dagnn.Conv blocks (beta18 has no such property); refuse a real dilation."""
    layers = net.get("layers")
    for layer in layers if isinstance(layers, list) else [layers]:
        if not isinstance(layer, dict) or str(layer.get("type", "")) != "dagnn.Conv":
            continue
        block = layer.get("block")
        if not isinstance(block, dict) or "dilate" not in block:
            continue
        values = np.asarray(block["dilate"], dtype=np.float64).ravel()
        if values.size and np.any(values != 1):
            raise CqdError(
                f"{source}: layer '{layer.get('name', '?')}' has dilate {values.tolist()}, which MatConvNet 1.0-beta18 "
                "cannot run; pass --keep-dilate to write it for a later MatConvNet"
            )
        del block["dilate"]


def _to_savemat(value: Any, where: str, notes: list[str], dag_top: bool = False) -> Any:
    """The plain-Python value as `scipy.io.savemat` writes it back to the same MATLAB class."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not _IDENTIFIER.match(str(key)):
                notes.append(f"field '{where}.{key}' is not a MATLAB name; left out")
                continue
            if dag_top and key in DAGNN_STRUCT_ARRAYS:
                items = item if isinstance(item, list) else [item]
                out[key] = _struct_array([_to_savemat(v, f"{where}.{key}", notes) for v in items], f"{where}.{key}", notes)
            else:
                out[key] = _to_savemat(item, f"{where}.{key}", notes)
        return out
    if isinstance(value, list):
        cell = np.empty((1, len(value)), dtype=object)
        for index, item in enumerate(value):
            cell[0, index] = _to_savemat(item, f"{where}{{{index + 1}}}", notes)
        return cell
    if isinstance(value, (str, np.ndarray)):
        return value
    if isinstance(value, (bool, int, float, np.generic)):
        return np.asarray(value)
    notes.append(f"{where}: a MATLAB {getattr(value, 'class_name', type(value).__name__)} has no MAT v7 form here; written as []")
    return np.zeros((0, 0))


def _struct_array(items: list[Any], where: str, notes: list[str]) -> np.ndarray:
    """A 1 x N struct array (numpy record array of objects) from N dicts, fields in first-seen order."""
    fields: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            raise CqdError(f"{where}: a DagNN struct array holds a {type(item).__name__}; the file is not a DagNN model")
        fields.extend(k for k in item if k not in fields)
    array = np.empty((1, len(items)), dtype=[(f, object) for f in fields])
    for index, item in enumerate(items):
        for f in fields:
            array[0, index][f] = item.get(f, np.zeros((0, 0)))
    return array
