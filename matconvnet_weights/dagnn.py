"""MatConvNet DagNN model files (`net.saveobj()`) -> the layer list.

A DagNN file holds `vars`, `params` (`name`, `value`, `learningRate`,
`weightDecay`), `layers` (`name`, `type` such as `dagnn.Conv`, `inputs`,
`outputs`, `params`, `block`) and `meta`. The layers need not be stored in
execution order: the chain is recovered by following the variables from the
network input (the one variable no layer produces) to the end. Anything but
a chain (a layer with several inputs or outputs, a variable read by two
layers, a disconnected layer) is refused, because the project runs chain
networks like `vl_simplenn`. Trailing `dagnn.Loss` layers (and the `label`
input they read) are dropped with a note: the converted network is for
inference.

Per-parameter `learningRate` / `weightDecay` multipliers are kept in
`meta["param_multipliers"]` under the state-dict key they belong to, and the
DagNN variable each layer writes in `meta["variables"]` (CQD reads the
logits from the variable `prediction`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.errors import CqdError
from matconvnet_weights.simplenn import (
    DEFAULT_BNORM_EPSILON,
    DEFAULT_DROPOUT_RATE,
    DEFAULT_LRN_PARAM,
    LAYOUT_DAGNN,
    ImportedNetwork,
    NetworkBuilder,
    input_channels,
    note_dropped_layers,
    read_meta,
)

DAGNN_TYPES = (
    "dagnn.Conv",
    "dagnn.ReLU",
    "dagnn.LRN",
    "dagnn.Pooling",
    "dagnn.DropOut",
    "dagnn.SoftMax",
    "dagnn.BatchNorm",
)
DAGNN_LOSS_TYPES = ("dagnn.Loss",)


def read_dagnn(top: dict[str, Any], path: Path) -> ImportedNetwork:
    """Convert the plain contents of a DagNN `saveobj` file to an `ImportedNetwork`."""
    layers = _as_list(top.get("layers"))
    params = {str(p.get("name")): p for p in _as_list(top.get("params")) if isinstance(p, dict)}
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        raise CqdError(f"{path}: 'layers' is not a struct array of DagNN layers; not a MatConvNet DagNN file")
    for layer in layers:
        layer["inputs"] = _names(layer.get("inputs"))
        layer["outputs"] = _names(layer.get("outputs"))
        layer["params"] = _names(layer.get("params"))

    order, dropped, input_var = _chain_order(layers, path)
    meta = read_meta(top, path)
    builder = NetworkBuilder(path, input_channels(meta))
    variables: dict[str, str] = {}
    multipliers: dict[str, dict[str, float]] = {}
    for layer in order:
        name = str(layer["name"])
        _dagnn_layer(builder, layer, params, path, multipliers)
        variables[name] = layer["outputs"][0]
    note_dropped_layers(meta, [{"name": str(d["name"]), "type": str(d["type"])} for d in dropped])
    meta["input_variable"] = input_var
    meta["variables"] = variables
    meta["param_multipliers"] = multipliers
    return builder.finish(meta, LAYOUT_DAGNN)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value) if isinstance(value, list) else []


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str) and v]
    return []


def _chain_order(layers: list[dict[str, Any]], path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Execution order of a chain DAG, the dropped trailing loss layers, and the input variable."""
    consumers: dict[str, list[str]] = {}
    for layer in layers:
        for var in layer["inputs"]:
            consumers.setdefault(var, []).append(str(layer["name"]))

    # A loss layer is dropped when nothing reads what it writes.
    dropped = [
        layer
        for layer in layers
        if str(layer.get("type")) in DAGNN_LOSS_TYPES and not any(v in consumers for v in layer["outputs"])
    ]
    dropped_names = {str(layer["name"]) for layer in dropped}
    kept = [layer for layer in layers if str(layer["name"]) not in dropped_names]
    if not kept:
        raise CqdError(f"{path}: the DagNN network has no layers besides its loss; nothing to convert")

    def not_chain(reason: str) -> CqdError:
        return CqdError(
            f"{path}: the DagNN network is not a chain ({reason}); only chain networks "
            "(like VGG-M and VGG-VD-16) can be converted"
        )

    for layer in kept:
        if len(layer["inputs"]) != 1 or len(layer["outputs"]) != 1:
            raise not_chain(
                f"layer '{layer['name']}' has {len(layer['inputs'])} inputs and {len(layer['outputs'])} outputs"
            )
    producer: dict[str, dict[str, Any]] = {}
    for layer in kept:
        out = layer["outputs"][0]
        if out in producer:
            raise not_chain(f"variable '{out}' is written by layers '{producer[out]['name']}' and '{layer['name']}'")
        producer[out] = layer
    readers: dict[str, list[dict[str, Any]]] = {}
    for layer in kept:
        readers.setdefault(layer["inputs"][0], []).append(layer)
    for var, rs in readers.items():
        if len(rs) > 1:
            raise not_chain(f"variable '{var}' is read by layers {', '.join(repr(str(r['name'])) for r in rs)}")
    starts = [var for var in readers if var not in producer]
    if len(starts) != 1:
        raise not_chain(f"{len(starts)} input variables ({', '.join(starts)})")

    order: list[dict[str, Any]] = []
    var = starts[0]
    while var in readers:
        layer = readers[var][0]
        order.append(layer)
        var = layer["outputs"][0]
        if len(order) > len(kept):
            raise not_chain("the layers form a cycle")
    if len(order) != len(kept):
        missing = [str(layer["name"]) for layer in kept if layer not in order]
        raise not_chain(f"layer(s) {', '.join(missing)} are not connected to the input '{starts[0]}'")
    return order, dropped, starts[0]


def _dagnn_layer(
    builder: NetworkBuilder,
    layer: dict[str, Any],
    params: dict[str, dict[str, Any]],
    path: Path,
    multipliers: dict[str, dict[str, float]],
) -> None:
    name = str(layer["name"])
    mtype = str(layer.get("type", ""))
    block = layer.get("block") if isinstance(layer.get("block"), dict) else {}
    if mtype not in DAGNN_TYPES:
        raise CqdError(
            f"{path}: layer '{name}' has unknown type '{mtype}' "
            f"(supported: {', '.join(DAGNN_TYPES)}); remove it or convert a network without it"
        )

    def take(index: int, state_key: str) -> Any:
        names = layer["params"]
        if index >= len(names):
            return None
        if names[index] not in params:
            raise CqdError(f"{path}: layer '{name}' uses parameter '{names[index]}', which the file does not hold")
        entry = params[names[index]]
        value = entry.get("value")
        entry["value"] = None  # let the file's array go once converted
        multipliers[state_key] = {
            "learningRate": _scalar(entry.get("learningRate"), 1.0),
            "weightDecay": _scalar(entry.get("weightDecay"), 1.0),
        }
        return value

    if mtype == "dagnn.Conv":
        has_bias = bool(_scalar(block.get("hasBias"), 1.0))
        filters = take(0, f"{name}.weight")
        biases = take(1, f"{name}.bias") if has_bias else None
        builder.conv(
            name,
            filters,
            biases,
            pad=block.get("pad", 0),
            stride=block.get("stride", 1),
            dilate=block.get("dilate", 1),
        )
        if f"{name}.bias" not in builder.state:  # hasBias false, or empty biases
            multipliers.pop(f"{name}.bias", None)
    elif mtype == "dagnn.ReLU":
        builder.relu(name, block.get("leak", 0.0))
    elif mtype == "dagnn.LRN":
        builder.lrn(name, block.get("param", DEFAULT_LRN_PARAM))
    elif mtype == "dagnn.Pooling":
        builder.pool(
            name,
            method=block.get("method", "max"),
            size=block.get("poolSize", 1),
            pad=block.get("pad", 0),
            stride=block.get("stride", 1),
        )
    elif mtype == "dagnn.DropOut":
        builder.dropout(name, block.get("rate", DEFAULT_DROPOUT_RATE))
    elif mtype == "dagnn.SoftMax":
        builder.softmax(name)
    elif mtype == "dagnn.BatchNorm":
        gain = take(0, f"{name}.weight")
        bias = take(1, f"{name}.bias")
        moments = take(2, f"{name}.moments")
        builder.bnorm(name, gain, bias, moments, block.get("epsilon", DEFAULT_BNORM_EPSILON))


def _scalar(value: Any, default: float) -> float:
    if value is None:
        return default
    array = np.asarray(value, dtype=np.float64).ravel()
    return float(array[0]) if array.size else default
