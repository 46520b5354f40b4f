"""Readers for the MatConvNet reference files described in `../shared/parity/FORMAT.md`.

Kinds of file, told apart by their name (`reference_kind`):

- `ops_*.mat`: single operators (`cases`, a cell array of structs);
- `ref_*.mat`: one whole network, layer by layer (`x`, `dzdx`, `dzdw` cells);
- `train_*.mat`: SGD steps of CQD training (replayed by `cqd_port_parity.train_reference`;
  here they are only found and their provenance read);
- the released CQD pipeline's files (../shared/release-parity), read by their
  own checkers: `train_epochs_*.mat` (`cqd_port_parity.release_train`), `tps_*.mat`
  (`cqd_port_parity.release_tps`) and `sed_*.mat` (`cqd_port_parity.release_sed`, with the
  `sed_model_*.mat` beside them, which is a model, not a reference).

Files are read with scipy (`squeeze_me=False`, `struct_as_record=False`): scipy's
`squeeze_me=True` would drop *every* singleton dimension, whereas MATLAB only
drops trailing ones, which `cqd_port.layout.pad_trailing_dims` restores. Every
tensor leaves this module already in PyTorch layout (NCHW activations, OIHW
filters, 1-D biases), converted by `cqd_port.layout` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

from cqd_port.errors import CqdError
from cqd_port.layout import bias_vector, filters_to_oihw, mcn_to_nchw
from cqd_port.nn.lrn import LRN_MODES

OPS_PREFIX, NETWORK_PREFIX, TRAIN_PREFIX = "ops_", "ref_", "train_"
# The released CQD pipeline's references (../shared/release-parity/README.md).
TRAIN_EPOCHS_PREFIX, TPS_PREFIX, SED_PREFIX, SED_MODEL_PREFIX = "train_epochs_", "tps_", "sed_", "sed_model_"


# --------------------------------------------------------------------------- MAT-file plumbing


def load_mat(path: str | Path) -> dict[str, Any]:
    """`scipy.io.loadmat` with the options FORMAT.md requires; CqdError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CqdError(f"reference file not found: {path} (check the path or --reference-dir)")
    try:
        return scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except Exception as exc:  # scipy raises several types for truncated/corrupt files
        raise CqdError(f"cannot read reference file {path}: {exc} (re-export or re-copy it)") from None


def _require(data: dict[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise CqdError(f"reference file {path} has no variable '{key}' (not a file in the FORMAT.md layout)")
    return data[key]


def _struct(value: Any) -> Any:
    """A 1x1 MATLAB struct (possibly wrapped in a 1x1 cell, as the files store it)."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.flat[0]
    return value


def _field(struct: Any, name: str, default: Any = None) -> Any:
    return getattr(struct, name) if name in getattr(struct, "_fieldnames", ()) else default


def mat_string(value: Any) -> str:
    """A MATLAB char array (as scipy returns it) -> str."""
    value = _struct(value)
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        return "".join(str(v) for v in value.ravel())
    return str(value)


def mat_floats(value: Any) -> list[float]:
    """A MATLAB numeric array -> its values as Python floats (linear order of the stored data)."""
    return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def mat_float(value: Any) -> float:
    """The first value of a MATLAB numeric array (a scalar is a 1x1 array)."""
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def mat_ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def cell_list(value: Any) -> list[Any]:
    """A MATLAB cell array -> list, in MATLAB's linear (column-major) order."""
    return list(np.asarray(value, dtype=object).ravel(order="F"))


def _is_empty(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.size == 0


def activation(value: Any) -> torch.Tensor:
    """An H x W x C x N MatConvNet array (trailing singletons dropped) -> NCHW float tensor."""
    return mcn_to_nchw(np.asarray(value))


# --------------------------------------------------------------------------- provenance


@dataclass
class Provenance:
    """Where a reference file came from (`provenance` struct of every ops/ref/train file)."""

    tool: str = ""
    matconvnet: str = ""
    lrn: str = ""
    created: str = ""
    network: str = ""


def read_provenance(data: dict[str, Any], path: Path) -> Provenance:
    if "provenance" not in data:
        return Provenance()
    struct = _struct(data["provenance"])
    prov = Provenance(**{name: mat_string(_field(struct, name, "")) for name in Provenance.__dataclass_fields__})
    if prov.lrn and prov.lrn not in LRN_MODES:
        raise CqdError(
            f"reference file {path}: provenance.lrn is '{prov.lrn}', expected one of {', '.join(LRN_MODES)}"
        )
    return prov


# --------------------------------------------------------------------------- ops_*.mat


@dataclass
class OpCase:
    """One operator case of an `ops_*.mat` file, in PyTorch layout.

    `tensors` holds every array field: activations (`x`, `y`, `dzdy`, `dzdx`,
    `mask`, `v`) as NCHW, filters (`w`, `dzdw`) as OIHW, biases and bnorm
    gains (`b`, `dzdb`, `g`) as 1-D, `moments` as C x 2, loss outputs as
    0-d or 1-D. `params` holds the options as plain Python (`pad`, `stride`,
    `dilate`, `pool`, `method`, `param`, `leak`, `rate`, `epsilon`, `T1`,
    `T2`) and `labels` (0-based class indices) for the losses.
    """

    name: str
    op: str
    tensors: dict[str, torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpsFile:
    path: Path
    provenance: Provenance
    cases: list[OpCase]


_ACTIVATION_FIELDS = ("x", "y", "dzdy", "dzdx", "mask", "v")
_VECTOR_FIELDS = ("b", "dzdb", "g")
_INT_LIST_PARAMS = ("pad", "stride", "dilate", "pool")
_FLOAT_PARAMS = ("leak", "rate", "epsilon", "T1", "T2")
_LOSS_OPS = ("loss_softmaxlog", "softmaxloss")


def _read_op_case(struct: Any, path: Path, index: int) -> OpCase:
    name = mat_string(_field(struct, "name", f"case{index + 1}"))
    op = mat_string(_field(struct, "op", ""))
    if not op:
        raise CqdError(f"reference file {path}: case {index + 1} ('{name}') has no 'op' field")
    tensors: dict[str, torch.Tensor] = {}
    params: dict[str, Any] = {}
    for key in struct._fieldnames:
        value = getattr(struct, key)
        if key in ("name", "op"):
            continue
        if key == "method":
            params[key] = mat_string(value)
        elif key in _INT_LIST_PARAMS:
            params[key] = mat_ints(value)
        elif key == "param":
            params[key] = mat_floats(value)
        elif key in _FLOAT_PARAMS:
            params[key] = mat_float(value)
        elif key == "c":
            params["labels"] = torch.tensor([int(v) - 1 for v in np.asarray(value).reshape(-1)], dtype=torch.long)
        elif op in _LOSS_OPS and key in ("y", "dzdy"):
            tensors[key] = torch.from_numpy(np.asarray(value).reshape(()).copy())  # a scalar loss
        elif op == "distill" and key == "dzdy":
            # The CQD distillation block takes a scalar projection.
            tensors[key] = torch.from_numpy(np.asarray(value).reshape(()).copy())
        elif key in _ACTIVATION_FIELDS:
            tensors[key] = activation(value)
        elif key in ("w", "dzdw"):
            tensors[key] = filters_to_oihw(np.asarray(value))
        elif key in _VECTOR_FIELDS:
            tensors[key] = bias_vector(np.asarray(value).copy())
        elif key == "moments":
            tensors[key] = torch.from_numpy(np.asarray(value).reshape(-1, 2, order="F").copy())
        else:
            params[key] = value  # unknown extra field: kept, unused
    return OpCase(name=name, op=op, tensors=tensors, params=params)


def read_ops_file(path: str | Path) -> OpsFile:
    """Read an `ops_*.mat` file: every case in `cases`, with its provenance."""
    path = Path(path)
    data = load_mat(path)
    cases_cell = _require(data, "cases", path)
    cases = []
    for index, item in enumerate(cell_list(cases_cell)):
        struct = _struct(item)
        if not hasattr(struct, "_fieldnames"):
            raise CqdError(f"reference file {path}: cases{{{index + 1}}} is not a struct")
        cases.append(_read_op_case(struct, path, index))
    return OpsFile(path=path, provenance=read_provenance(data, path), cases=cases)


# --------------------------------------------------------------------------- ref_*.mat


# Which state-dict entry each element of MatConvNet's `res(i).dzdw` cell is, by layer type.
_PARAM_KEYS = {"conv": ("weight", "bias"), "bnorm": ("weight", "bias", "moments")}


@dataclass
class NetworkReference:
    """A `ref_*.mat` file: one network run by `vl_simplenn` in test mode, layer by layer.

    All lists are indexed from 0 in Python, so `x[i + 1]` is the output of
    layer `i` (MATLAB's `x{i+1}`), `x[0]` the input, `dzdx[i]` the derivative
    with respect to the input of layer `i`, and `dzdw[i]` maps a state-dict
    suffix (`weight`, `bias`, `moments`) to the derivative of layer `i`'s
    parameter (empty for layers without parameters).
    """

    path: Path
    provenance: Provenance
    image: torch.Tensor
    input: torch.Tensor
    names: list[str]
    types: list[str]
    x: list[torch.Tensor]
    dzdy: torch.Tensor
    dzdx: list[torch.Tensor]
    dzdw: list[dict[str, torch.Tensor]]
    notes: list[str] = field(default_factory=list)
    """Per layer, the exporter's note on why its backward may differ from a chained comparison
    (`export_reference.m`: bnorm batch statistics, ReLU inputs at float noise); "" for none,
    and an empty list for files written before the exporter wrote notes."""

    @property
    def network_name(self) -> str:
        return self.provenance.network


def _param_derivative(layer_type: str, index: int, value: Any) -> torch.Tensor:
    array = np.asarray(value)
    if layer_type == "conv" and index == 0:
        return filters_to_oihw(array)
    if layer_type == "bnorm" and index == 2:
        return torch.from_numpy(array.reshape(-1, 2, order="F").copy())
    return bias_vector(array.copy())


def read_network_reference(path: str | Path) -> NetworkReference:
    """Read a `ref_*.mat` file (FORMAT.md, "net_*.mat and ref_*.mat")."""
    path = Path(path)
    data = load_mat(path)
    names = [mat_string(v) for v in cell_list(_require(data, "names", path))]
    types = [mat_string(v) for v in cell_list(_require(data, "types", path))]
    xs = [activation(v) for v in cell_list(_require(data, "x", path))]
    dzdx = [activation(v) for v in cell_list(_require(data, "dzdx", path))]
    dzdw_cells = cell_list(_require(data, "dzdw", path))
    n = len(names)
    if not (len(types) == n and len(xs) == n + 1 and len(dzdx) == n + 1 and len(dzdw_cells) == n):
        raise CqdError(
            f"reference file {path}: inconsistent lengths (names {n}, types {len(types)}, x {len(xs)}, "
            f"dzdx {len(dzdx)}, dzdw {len(dzdw_cells)}; expected x and dzdx to have one more than names)"
        )
    dzdw: list[dict[str, torch.Tensor]] = []
    for layer_type, cell in zip(types, dzdw_cells):
        entry: dict[str, torch.Tensor] = {}
        if not _is_empty(cell):
            keys = _PARAM_KEYS.get(layer_type, ())
            for k, value in enumerate(cell_list(cell)):
                if k < len(keys) and not _is_empty(value):
                    entry[keys[k]] = _param_derivative(layer_type, k, value)
        dzdw.append(entry)
    notes = [mat_string(v) if not _is_empty(v) else "" for v in cell_list(data["notes"])] if "notes" in data else []
    if notes and len(notes) != n:
        raise CqdError(f"reference file {path}: 'notes' has {len(notes)} entries for {n} layers; re-export it")
    return NetworkReference(
        path=path,
        provenance=read_provenance(data, path),
        image=activation(_require(data, "image", path)),
        input=activation(_require(data, "input", path)),
        names=names,
        types=types,
        x=xs,
        dzdy=activation(_require(data, "dzdy", path)),
        dzdx=dzdx,
        dzdw=dzdw,
        notes=notes,
    )


# --------------------------------------------------------------------------- train_*.mat and discovery


def read_train_provenance(path: str | Path) -> Provenance:
    """The provenance of a `train_*.mat` file (the replay itself is `cqd_port_parity.train_reference`)."""
    path = Path(path)
    return read_provenance(load_mat(path), path)


# Kinds of reference file, by name prefix; the longer prefix wins (`train_epochs_` before `train_`).
# `sed_model_*.mat` is not a reference: it is the edge-detector model for the `sed_*` files beside it.
_KINDS_BY_PREFIX = (
    (SED_MODEL_PREFIX, None),
    (TRAIN_EPOCHS_PREFIX, "train_epochs"),
    (OPS_PREFIX, "ops"),
    (NETWORK_PREFIX, "ref"),
    (TRAIN_PREFIX, "train"),
    (TPS_PREFIX, "tps"),
    (SED_PREFIX, "sed"),
)
REFERENCE_KINDS = ("ops", "ref", "train", "train_epochs", "tps", "sed")


def reference_kind(path: str | Path) -> str | None:
    """The kind of reference file from its name (one of `REFERENCE_KINDS`); None for any other
    file (`net_*.mat`, `sed_model_*.mat`, ...)."""
    name = Path(path).name
    if not name.endswith(".mat"):
        return None
    for prefix, kind in _KINDS_BY_PREFIX:
        if name.startswith(prefix):
            return kind
    return None


@dataclass
class ReferenceFiles:
    """Reference files found in a set of directories, by kind (`REFERENCE_KINDS`), in a stable order."""

    by_kind: dict[str, list[Path]] = field(default_factory=lambda: {kind: [] for kind in REFERENCE_KINDS})

    @property
    def ops(self) -> list[Path]:
        return self.by_kind["ops"]

    @property
    def refs(self) -> list[Path]:
        return self.by_kind["ref"]

    @property
    def trains(self) -> list[Path]:
        return self.by_kind["train"]

    def all(self) -> list[Path]:
        return [path for kind in REFERENCE_KINDS for path in self.by_kind[kind]]


def find_reference_files(directories: list[Path]) -> ReferenceFiles:
    """Every reference .mat file in `directories` and their subfolders, by kind, sorted by name.

    A file name present in several places is taken once, from the first
    directory that has it (the packaged `parity/reference/` copies of the
    `ops_*.mat` files and the originals in `../shared/parity` are the same data).
    """
    found = ReferenceFiles()
    seen: set[str] = set()
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            raise CqdError(f"reference directory not found: {directory} (pass an existing --reference-dir)")
        for path in sorted(directory.rglob("*.mat"), key=lambda p: (len(p.relative_to(directory).parts), str(p))):
            kind = reference_kind(path)
            if kind is None or path.name in seen:
                continue
            seen.add(path.name)
            found.by_kind[kind].append(path)
    for paths in found.by_kind.values():
        paths.sort(key=lambda p: p.name)
    return found
