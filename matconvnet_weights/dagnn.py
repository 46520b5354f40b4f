"""MatConvNet DagNN model files (`net.saveobj()`) -> `ImportedNetwork`.

A DagNN file holds `vars`, `params` (`name`, `value`, `learningRate`,
`weightDecay`), `layers` (`name`, `type` such as `dagnn.Conv`, `inputs`,
`outputs`, `params`, `block`) and `meta`. The layers need not be stored in
execution order.

- A network that is a chain (every layer reads one variable and writes one,
  each variable read once) becomes a chain layer list, exactly as the same
  network saved by SimpleNN (`net_vggm_tiny_dag.mat` and `net_vggm_tiny.mat`
  give identical networks).
- Anything else (ResNet's `dagnn.Sum`, LapSRN's two branches, `dagnn.Concat`,
  FCN's `dagnn.Crop`) becomes a graph: each layer keeps its input and output
  variable names and `cqd_port.models.graph.GraphNetwork` runs it in DagNN's
  order. A parameter used by several layers (recursive networks) is stored
  once and the other layers point at it (`attrs["shared"]`).

Trailing loss layers (`dagnn.Loss`, any type named like a loss, such as
LapSRN's `vllab_dag_loss`) whose outputs nothing reads are dropped with a
note, and with them the inputs only they read (labels). Layers of types the
port does not know are kept as `unknown` (shown by `inspect`, refused by
conversion).

Per-parameter `learningRate` / `weightDecay` multipliers are kept in
`meta["param_multipliers"]` and the DagNN parameter names in
`meta["param_names"]`, both under the state-dict key they belong to; the
variable each chain layer writes is in `meta["variables"]` (CQD reads the
logits from the variable `prediction`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.errors import CqdError
from cqd_port.models.graph import execution_order
from cqd_port.models.layers import LayerSpec
from matconvnet_weights.network import (
    DEFAULT_BNORM_EPSILON,
    DEFAULT_DROPOUT_RATE,
    DEFAULT_LRN_PARAM,
    LAYOUT_DAGNN,
    ImportedNetwork,
    NetworkBuilder,
    note_dropped_layers,
    read_meta,
)
from matconvnet_weights.simplenn import is_loss_type
from matconvnet_weights.validate import FieldError, check_graph, variable_names

DAGNN_TYPES = (
    "dagnn.Conv",
    "dagnn.ConvTranspose",
    "dagnn.ReLU",
    "dagnn.LRN",
    "dagnn.Pooling",
    "dagnn.DropOut",
    "dagnn.SoftMax",
    "dagnn.BatchNorm",
    "dagnn.Sum",
    "dagnn.Concat",
    "dagnn.Crop",
    "dagnn.Scale",
)
# The parameter roles of each type with parameters, in DagNN's `params` order.
PARAM_ROLES = {
    "dagnn.Conv": ("weight", "bias"),
    "dagnn.ConvTranspose": ("weight", "bias"),
    "dagnn.BatchNorm": ("weight", "bias", "moments"),
    "dagnn.Scale": ("weight", "bias"),
}


def read_dagnn(top: dict[str, Any], path: Path) -> ImportedNetwork:
    """Convert the plain contents of a DagNN `saveobj` file to an `ImportedNetwork`."""
    layers = _as_list(top.get("layers"))
    params = {str(p.get("name")): p for p in _as_list(top.get("params")) if isinstance(p, dict)}
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        raise CqdError(f"{path}: 'layers' is not a struct array of DagNN layers; not a MatConvNet DagNN file")
    names_seen: set[str] = set()
    for index, layer in enumerate(layers):
        layer["name"] = layer["name"] if isinstance(layer.get("name"), str) and layer["name"] else f"layer{index + 1}"
        if layer["name"] in names_seen:
            raise CqdError(f"{path}: two layers are named '{layer['name']}'; layer names must be unique")
        names_seen.add(layer["name"])
        layer["type"] = str(layer.get("type", "")) if isinstance(layer.get("type", ""), str) else "?"
        for field in ("inputs", "outputs", "params"):
            try:
                layer[field] = variable_names(layer.get(field))
            except FieldError as exc:
                raise CqdError(f"{path}: layer '{layer['name']}': '{field}' {exc}") from None
        if not layer["outputs"]:
            raise CqdError(f"{path}: layer '{layer['name']}' writes no variable; not a valid DagNN layer")

    kept, dropped = _drop_trailing_losses(layers, path)
    check_graph(kept, path, _declared_variables(top.get("vars")))
    chain = _chain_order(kept)
    meta = read_meta(top, path)
    builder = NetworkBuilder(path)
    multipliers: dict[str, dict[str, float]] = {}
    param_names: dict[str, str] = {}
    uses: dict[str, int] = {}
    for layer in kept:
        for p in layer["params"]:
            uses[p] = uses.get(p, 0) + 1
    if chain is not None:
        order = chain
    else:
        stand_ins = [LayerSpec(l["name"], "unknown", {"inputs": l["inputs"], "outputs": l["outputs"]}) for l in kept]
        order = [kept[i] for i in execution_order(stand_ins)]
    variables: dict[str, str] = {}
    for layer in order:
        roles = dict(zip(PARAM_ROLES.get(layer["type"], ()), layer["params"]))
        if chain is None:
            builder.begin(layer["inputs"], layer["outputs"], roles)
        else:
            builder.next_params(roles)
        _dagnn_layer(builder, layer, params, uses, path, multipliers, param_names)
        variables[builder.key(layer["name"])] = layer["outputs"][0]
    note_dropped_layers(meta, [{"name": str(d["name"]), "type": str(d["type"])} for d in dropped])
    if chain is not None:
        meta["input_variable"] = chain[0]["inputs"][0]
        meta["variables"] = variables
    meta["param_multipliers"] = multipliers
    meta["param_names"] = param_names
    return builder.finish(meta, LAYOUT_DAGNN)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value) if isinstance(value, list) else []


def _declared_variables(value: Any) -> list[str]:
    """The variable names of `net.vars` (empty when the file has none, or they have no names)."""
    names = [v.get("name") for v in _as_list(value) if isinstance(v, dict)]
    return [n for n in names if isinstance(n, str)] if names and all(isinstance(n, str) for n in names) else []


def _drop_trailing_losses(layers: list[dict[str, Any]], path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Loss layers whose outputs nothing reads are dropped, repeatedly (a loss feeding only another loss)."""
    kept = list(layers)
    dropped: list[dict[str, Any]] = []
    while True:
        read = {var for layer in kept for var in layer["inputs"]}
        ends = [layer for layer in kept if is_loss_type(layer["type"]) and not any(v in read for v in layer["outputs"])]
        if not ends:
            break
        dropped.extend(ends)
        kept = [layer for layer in kept if all(layer is not e for e in ends)]
    if not kept:
        raise CqdError(f"{path}: the DagNN network has no layers besides its loss; nothing to convert")
    return kept, dropped


def _chain_order(layers: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The layers in chain order when the network is a chain, else None (a graph)."""
    if any(len(layer["inputs"]) != 1 or len(layer["outputs"]) != 1 for layer in layers):
        return None
    producer: dict[str, dict[str, Any]] = {}
    readers: dict[str, list[dict[str, Any]]] = {}
    for layer in layers:
        if layer["outputs"][0] in producer:
            return None
        producer[layer["outputs"][0]] = layer
        readers.setdefault(layer["inputs"][0], []).append(layer)
    if any(len(rs) > 1 for rs in readers.values()):
        return None
    starts = [var for var in readers if var not in producer]
    if len(starts) != 1:
        return None
    order: list[dict[str, Any]] = []
    var = starts[0]
    while var in readers and len(order) <= len(layers):
        layer = readers[var][0]
        order.append(layer)
        var = layer["outputs"][0]
    return order if len(order) == len(layers) else None


def _dagnn_layer(
    builder: NetworkBuilder,
    layer: dict[str, Any],
    params: dict[str, dict[str, Any]],
    uses: dict[str, int],
    path: Path,
    multipliers: dict[str, dict[str, float]],
    param_names: dict[str, str],
) -> None:
    name = str(layer["name"])
    mtype = layer["type"]
    block = layer.get("block") if isinstance(layer.get("block"), dict) else {}
    if mtype not in DAGNN_TYPES:
        builder.unknown(name, mtype)
        return

    def take(index: int, role: str) -> Any:
        names = layer["params"]
        if index >= len(names):
            return None
        if names[index] not in params:
            raise CqdError(f"{path}: layer '{name}' uses parameter '{names[index]}', which the file does not hold")
        entry = params[names[index]]
        value = entry.get("value")
        if uses.get(names[index], 1) <= 1:
            entry["value"] = None  # let the file's array go once converted (kept while shared)
        if names[index] not in builder.param_owner:
            key = f"{builder.key(name)}.{role}"
            multipliers[key] = {
                "learningRate": _scalar(entry.get("learningRate"), 1.0),
                "weightDecay": _scalar(entry.get("weightDecay"), 1.0),
            }
            param_names[key] = names[index]
        return value

    def drop_unused(*roles: str) -> None:
        for role in roles:
            key = f"{builder.key(name)}.{role}"
            if key not in builder.state:
                multipliers.pop(key, None)
                param_names.pop(key, None)

    if mtype == "dagnn.Conv":
        has_bias = bool(_scalar(block.get("hasBias"), 1.0))
        filters = take(0, "weight")
        biases = take(1, "bias") if has_bias else None
        builder.conv(name, filters, biases, pad=block.get("pad", 0), stride=block.get("stride", 1), dilate=block.get("dilate", 1))
        drop_unused("bias")
    elif mtype == "dagnn.ConvTranspose":
        has_bias = bool(_scalar(block.get("hasBias"), 1.0))
        filters = take(0, "weight")
        biases = take(1, "bias") if has_bias else None
        builder.convt(
            name, filters, biases, upsample=block.get("upsample", 1), crop=block.get("crop", 0), groups=block.get("numGroups", 1)
        )
        drop_unused("bias")
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
        gain = take(0, "weight")
        bias = take(1, "bias")
        moments = take(2, "moments")
        builder.bnorm(name, gain, bias, moments, block.get("epsilon", DEFAULT_BNORM_EPSILON))
    elif mtype == "dagnn.Scale":
        has_bias = bool(_scalar(block.get("hasBias"), 1.0))
        multiplier = take(0, "weight")
        bias = take(1, "bias") if has_bias else None
        builder.scale(name, multiplier, bias)
        drop_unused("bias")
    elif mtype == "dagnn.Sum":
        builder.sum(name)
    elif mtype == "dagnn.Concat":
        builder.concat(name, block.get("dim", 3))
    elif mtype == "dagnn.Crop":
        builder.crop(name, block.get("crop", 0))


def _scalar(value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        array = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return default
    return float(array[0]) if array.size else default
