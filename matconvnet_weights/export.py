"""Write a network back to a MatConvNet model file (`cqd-port export-mat`).

Chains are written as SimpleNN in MatConvNet 1.0-beta18's layout, the
layout of `imagenet-vgg-m.mat` (`layers{i}` with `name`, `type`,
`weights = {filters, biases}`, `size`, `pad`, `stride`, `dilate`, `opts`,
`precious`; `meta.inputs`, `meta.normalization`, `meta.classes`), so
`vl_simplenn` runs them. Graphs (and chains holding a DagNN-only layer such
as `scale`) are written as DagNN `saveobj` structs (`vars`, `params`,
`layers`, `meta`), which `dagnn.DagNN.loadobj` rebuilds. Layer names are the
original MatConvNet names (`matconvnet_name`); DagNN parameter names and
learning-rate / weight-decay multipliers come back from the meta the
importer kept, else DagNN's defaults (`<layer>f`, `<layer>b`, `<layer>m`; 1).

The file is a MAT v5 file written by `scipy.io.savemat` (compressed, as
MATLAB's `-v7`), atomically (`cqd_port.fileio`). Reading it back with
`read_network` gives the same layer list and identical weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_path
from cqd_port.layout import nchw_to_mcn, oihw_to_filters
from cqd_port.models.graph import execution_order
from cqd_port.models.layers import LayerSpec, display_name
from matconvnet_weights.network import DEFAULT_BNORM_EPSILON, ImportedNetwork

SIMPLENN_EXPORT_TYPES = {
    "conv": "conv",
    "convt": "convt",
    "pool": "pool",
    "lrn": "lrn",
    "relu": "relu",
    "dropout": "dropout",
    "softmax": "softmax",
    "bnorm": "bnorm",
}
DAGNN_EXPORT_TYPES = {
    "conv": "dagnn.Conv",
    "convt": "dagnn.ConvTranspose",
    "pool": "dagnn.Pooling",
    "lrn": "dagnn.LRN",
    "relu": "dagnn.ReLU",
    "dropout": "dagnn.DropOut",
    "softmax": "dagnn.SoftMax",
    "bnorm": "dagnn.BatchNorm",
    "scale": "dagnn.Scale",
    "sum": "dagnn.Sum",
    "concat": "dagnn.Concat",
    "crop": "dagnn.Crop",
}
_PARAM_SUFFIX = {"weight": "f", "bias": "b", "moments": "m"}
_ROLES = {"conv": ("weight", "bias"), "convt": ("weight", "bias"), "bnorm": ("weight", "bias", "moments"), "scale": ("weight", "bias")}


def export_mat(source: str | os.PathLike[str], out: str | os.PathLike[str], force: bool = False) -> tuple[Path, str]:
    """Read a checkpoint (or `.mat`) and write it as a MatConvNet model file; returns (path, layout)."""
    from matconvnet_weights.convert import check_convertible, check_output_path, read_any

    source, out = Path(source), Path(out)
    if out.suffix.lower() != ".mat":
        raise CqdError(f"{out}: a MatConvNet model file must end in .mat; choose an output such as net.mat")
    check_output_path(out, source, force)
    network = read_any(source)
    check_convertible(network, source)
    return out, write_mat(network, out)


def write_mat(network: ImportedNetwork, out: str | os.PathLike[str]) -> str:
    """Write `network` to `out` (SimpleNN for chains, DagNN otherwise); returns the layout written."""
    import scipy.io

    specs = network.specs
    simplenn = not network.is_graph and all(s.type in SIMPLENN_EXPORT_TYPES for s in specs)
    contents = _simplenn(network) if simplenn else _dagnn(network)
    contents["meta"] = _meta(network)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            scipy.io.savemat(handle, contents, do_compression=True, oned_as="column")
    return "simplenn" if simplenn else "dagnn"


# ----------------------------------------------------------------------------- SimpleNN


def _simplenn(network: ImportedNetwork) -> dict[str, Any]:
    layers = [_simplenn_layer(spec, network.state) for spec in network.specs]
    return {"layers": _cell(layers)}


def _simplenn_layer(spec: LayerSpec, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    a = spec.attrs
    out: dict[str, Any] = {"name": display_name(spec), "type": SIMPLENN_EXPORT_TYPES[spec.type]}
    if spec.type == "conv":
        filters = oihw_to_filters(_param(spec, state, "weight"))
        biases = _column(_param(spec, state, "bias")) if a.get("has_bias", True) else np.zeros((0, 0), np.float32)
        out.update(weights=_cell([filters, biases]), size=_row(_filter_size(filters)), pad=_row(a["pad"]),
                   stride=_row(a["stride"]), dilate=_row(a.get("dilate", [1, 1])), opts=_cell([]))
    elif spec.type == "convt":
        filters = nchw_to_mcn(_param(spec, state, "weight"))
        biases = _column(_param(spec, state, "bias")) if a.get("has_bias", True) else np.zeros((0, 0), np.float32)
        out.update(weights=_cell([filters, biases]), size=_row(_filter_size(filters)), upsample=_row(a["upsample"]),
                   crop=_row(a["crop"]), numGroups=float(a.get("groups", 1)), opts=_cell([]))
    elif spec.type == "pool":
        out.update(method=str(a["method"]), pool=_row(a["pool"]), stride=_row(a["stride"]), pad=_row(a["pad"]), opts=_cell([]))
    elif spec.type == "lrn":
        out.update(type="normalize", param=_row(a["param"]))  # beta18's name (vl_simplenn also takes 'lrn')
    elif spec.type == "relu":
        out.update(leak=float(a.get("leak", 0.0)))
    elif spec.type == "dropout":
        out.update(rate=float(a.get("rate", 0.5)))
    elif spec.type == "bnorm":
        out.update(
            weights=_cell([_column(_param(spec, state, "weight")), _column(_param(spec, state, "bias")),
                           _param(spec, state, "moments").numpy().astype(np.float32)]),
            epsilon=float(a.get("epsilon", DEFAULT_BNORM_EPSILON)),
        )
    out["precious"] = False
    return out


# ----------------------------------------------------------------------------- DagNN


def _dagnn(network: ImportedNetwork) -> dict[str, Any]:
    specs = network.specs
    meta = network.meta or {}
    names = dict(meta.get("param_names") or {})
    multipliers = dict(meta.get("param_multipliers") or {})
    graph = network.is_graph
    input_var = str(meta.get("input_variable") or "input")
    variables = dict(meta.get("variables") or {})
    order = execution_order(specs) if graph else list(range(len(specs)))
    params: list[dict[str, Any]] = []
    param_of_key: dict[str, str] = {}
    layers: list[dict[str, Any]] = []
    previous = input_var
    var_names: list[str] = [] if graph else [input_var]
    for index in order:
        spec = specs[index]
        if spec.type not in DAGNN_EXPORT_TYPES:
            raise CqdError(f"layer '{display_name(spec)}' ({spec.type}) cannot be written to a DagNN file")
        if graph:
            inputs, outputs = list(spec.attrs["inputs"]), list(spec.attrs["outputs"])
        else:
            inputs, outputs = [previous], [variables.get(spec.name, f"x{index + 1}")]
            previous = outputs[0]
        for var in inputs + outputs:
            if var not in var_names:
                var_names.append(var)
        layer_params = []
        for role in _ROLES.get(spec.type, ()):
            shared = dict(spec.attrs.get("shared") or {}).get(role)
            key = shared or f"{spec.name}.{role}"
            if key not in network.state:
                continue  # no bias
            if key not in param_of_key:
                name = names.get(key) or f"{display_name(spec)}{_PARAM_SUFFIX[role]}"
                param_of_key[key] = name
                rates = multipliers.get(key, {})
                params.append({
                    "name": name,
                    "value": _param_value(spec.type, role, network.state[key]),
                    "learningRate": float(rates.get("learningRate", 1.0)),
                    "weightDecay": float(rates.get("weightDecay", 1.0)),
                })
            layer_params.append(param_of_key[key])
        layers.append({
            "name": display_name(spec),
            "type": DAGNN_EXPORT_TYPES[spec.type],
            "inputs": _cell(inputs),
            "outputs": _cell(outputs),
            "params": _cell(layer_params),
            "block": _block(spec, network.state),
        })
    return {
        "vars": _struct_array([{"name": v, "precious": False} for v in var_names], ["name", "precious"]),
        "params": _struct_array(params, ["name", "value", "learningRate", "weightDecay"]),
        "layers": _struct_array(layers, ["name", "type", "inputs", "outputs", "params", "block"]),
    }


def _param_value(kind: str, role: str, tensor: torch.Tensor) -> np.ndarray:
    if kind == "conv" and role == "weight":
        return oihw_to_filters(tensor)
    if kind == "convt" and role == "weight":
        return nchw_to_mcn(tensor)
    if kind == "scale":
        return nchw_to_mcn(tensor)
    if role == "moments":
        return tensor.detach().cpu().numpy().astype(np.float32)
    return _column(tensor)


def _block(spec: LayerSpec, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    a = spec.attrs
    if spec.type == "conv":
        weight = state[dict(a.get("shared") or {}).get("weight", f"{spec.name}.weight")]
        block = {"size": _row(_filter_size(oihw_to_filters(weight))), "hasBias": bool(a.get("has_bias", True)), "opts": _cell([]),
                 "pad": _row(a["pad"]), "stride": _row(a["stride"])}
        if any(int(d) != 1 for d in a.get("dilate", [1, 1])):  # beta18's dagnn.Conv has no 'dilate': only when needed
            block["dilate"] = _row(a["dilate"])
        return block
    if spec.type == "convt":
        weight = state[dict(a.get("shared") or {}).get("weight", f"{spec.name}.weight")]
        return {"size": _row(_filter_size(nchw_to_mcn(weight))), "hasBias": bool(a.get("has_bias", True)),
                "upsample": _row(a["upsample"]), "crop": _row(a["crop"]), "numGroups": float(a.get("groups", 1)), "opts": _cell([])}
    if spec.type == "pool":
        return {"method": str(a["method"]), "poolSize": _row(a["pool"]), "pad": _row(a["pad"]), "stride": _row(a["stride"]), "opts": _cell([])}
    if spec.type == "lrn":
        return {"param": _row(a["param"])}
    if spec.type == "relu":
        return {"useShortCircuit": True, "leak": float(a.get("leak", 0.0)), "opts": _cell([])}
    if spec.type == "dropout":
        return {"rate": float(a.get("rate", 0.5))}
    if spec.type == "bnorm":
        return {"numChannels": float(state[dict(a.get("shared") or {}).get("weight", f"{spec.name}.weight")].numel()),
                "epsilon": float(a.get("epsilon", DEFAULT_BNORM_EPSILON))}
    if spec.type == "scale":
        return {"size": _row(list(nchw_to_mcn(state[dict(a.get("shared") or {}).get("weight", f"{spec.name}.weight")]).shape)),
                "hasBias": bool(a.get("has_bias", True))}
    if spec.type == "concat":
        return {"dim": float(a.get("dim", 3))}
    if spec.type == "crop":
        return {"crop": _row(a["crop"])}
    return {}


# ----------------------------------------------------------------------------- meta and helpers


def _meta(network: ImportedNetwork) -> dict[str, Any]:
    meta = network.meta or {}
    out: dict[str, Any] = {}
    normalization = dict(meta.get("normalization") or {})
    norm_out: dict[str, Any] = {}
    for key, value in normalization.items():
        if key == "averageImage":
            if value is not None:
                array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                norm_out[key] = array.astype(np.float32)
        elif value is not None:
            norm_out[key] = _plain_to_mat(value)
    if norm_out:
        out["normalization"] = norm_out
    classes = dict(meta.get("classes") or {})
    if classes:
        out["classes"] = {k: (_cell([str(v) for v in vs]) if k in ("name", "description") else _plain_to_mat(vs)) for k, vs in classes.items()}
    inputs = meta.get("inputs")
    if inputs:
        out["inputs"] = _struct_array([{"name": i.get("name", "input"), "size": _row(i.get("size", []))} for i in inputs], ["name", "size"])
    for key, value in dict(meta.get("extra") or {}).items():
        if key.isidentifier() and key not in out:
            out[key] = _plain_to_mat(value)
    return out


def _plain_to_mat(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain_to_mat(v) for k, v in value.items() if str(k).isidentifier()}
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return _row(value)
        return _cell([_plain_to_mat(v) for v in value])
    return np.zeros((0, 0))


def _param(spec: LayerSpec, state: dict[str, torch.Tensor], role: str) -> torch.Tensor:
    key = dict(spec.attrs.get("shared") or {}).get(role, f"{spec.name}.{role}")
    if key not in state:
        raise CqdError(f"layer '{display_name(spec)}' has no parameter '{key}'; the checkpoint is incomplete")
    return state[key].detach().cpu()


def _filter_size(filters: np.ndarray) -> list[int]:
    shape = list(filters.shape) + [1] * (4 - filters.ndim)
    return shape[:4]


def _column(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().reshape(-1, 1).numpy().astype(np.float32)


def _row(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(1, -1)


def _cell(items: list[Any]) -> np.ndarray:
    array = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        array[0, i] = item
    return array


def _struct_array(items: list[dict[str, Any]], fields: list[str]) -> np.ndarray:
    array = np.empty((1, len(items)), dtype=[(f, object) for f in fields])
    for i, item in enumerate(items):
        for f in fields:
            array[0, i][f] = item.get(f, np.zeros((0, 0)))
    return array
